/* The walk of an indirect descriptor table as Linux fills one, in C, and
 * file I/O straight into or out of the buffers it found: a READ of 128 KiB
 * from the guest's page cache comes in a table of 35 entries the queue has
 * never seen, and walking it in Python, a memoryview per page, costs more
 * than the rest of the request. Included by _tablewalk_build.py; see
 * virtqueue.py and guest_buffers.py.
 *
 * The table is a copy the guest cannot change under us (bytes). Every buffer
 * is checked against the one memory region [base, base + size) in unsigned
 * arithmetic that cannot wrap; anything not of Linux's shape returns -1, and
 * the caller walks the table the general way (which says what is wrong). */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#define F_NEXT 1
#define F_WRITE 2

/* out: [0] readable runs, [1] bytes readable, [2] bytes writable, then a
 * (start, stop) pair of offsets in the region per run of adjacent buffers of
 * one direction, readable runs first; room for 3 + 2 * entries. Returns the
 * number of runs, or -1. */
static long walk_linux_table(const char *table, size_t entries, uint64_t base, uint64_t size,
                             uint64_t *out)
{
    uint64_t *run = out + 3, bytes[2] = {0, 0}, stop = UINT64_MAX;  /* stop: where the last run ends */
    size_t runs = 0, readable_runs = 0;
    int writing = 0;

    for (size_t i = 0; i < entries; i++) {
        const char *e = table + 16 * i;
        uint64_t addr, off;
        uint32_t len;
        uint16_t flags, next;

        memcpy(&addr, e, 8);        /* little-endian, as the host: virtqueue.py checks */
        memcpy(&len, e + 8, 4);
        memcpy(&flags, e + 12, 2);
        memcpy(&next, e + 14, 2);
        if (flags & ~(F_NEXT | F_WRITE))        /* nested indirect, or bits Linux never sets */
            return -1;
        if (flags & F_WRITE) {
            if (!writing) {
                writing = 1;
                readable_runs = runs;
                stop = UINT64_MAX;              /* a writable buffer never joins a readable one */
            }
        } else if (writing) {
            return -1;
        }
        if (len == 0 || addr < base)
            return -1;
        off = addr - base;
        if (off >= size || len > size - off)
            return -1;
        bytes[writing] += len;
        if (off == stop) {
            run[2 * runs - 1] = stop = off + len;
        } else {
            run[2 * runs] = off;
            run[2 * runs + 1] = stop = off + len;
            runs++;
        }
        if (!(flags & F_NEXT)) {
            out[0] = writing ? readable_runs : runs;
            out[1] = bytes[0];
            out[2] = bytes[1];
            return (long)runs;
        }
        if (next != i + 1)
            return -1;
    }
    return -1;                                  /* no last entry within the table */
}

#define MAX_IOV 1024                            /* UIO_MAXIOV: the kernel refuses more */

/* preadv (write = 0) or pwritev over count runs, as walk_linux_table wrote
 * them, of the region mapped here at base; -> bytes moved or -errno. The
 * runs were checked against the region by the walk, and the caller keeps
 * the mapping alive meanwhile. */
static long io_runs(int fd, uintptr_t base, const uint64_t *runs, size_t count, uint64_t offset,
                    int write)
{
    struct iovec iov[MAX_IOV];
    ssize_t n;

    if (count > MAX_IOV || offset > INT64_MAX)
        return -EINVAL;
    for (size_t i = 0; i < count; i++) {
        iov[i].iov_base = (char *)base + runs[2 * i];
        iov[i].iov_len = runs[2 * i + 1] - runs[2 * i];
    }
    n = write ? pwritev(fd, iov, (int)count, (off_t)offset) : preadv(fd, iov, (int)count, (off_t)offset);
    return n < 0 ? -errno : (long)n;
}
