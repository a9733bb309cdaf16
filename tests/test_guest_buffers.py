"""Guest buffers as the C table walk gives them (device/guest_buffers.py):
a list of memoryviews to whoever indexes, slices or iterates them, and a
preadv/pwritev of their own that must move the same bytes, with the same
errors, as os.preadv/os.pwritev over those views, and keep the memory
mapped while they live."""
import errno
import os
import random
import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvirtiofsd.device import virtqueue
from pyvirtiofsd.device.memory import GuestMemory

DESC = struct.Struct("<QIHH")
F_NEXT, F_WRITE = 1, 2
MEM = 1 << 20
BIG = 16 << 20                  # (room for 1,025 pages that are not adjacent)
PAGE = 4096


@pytest.fixture(autouse=True)
def every_direction_lazy():
    """Guest buffers for every direction walked, not only those of many runs."""
    saved, virtqueue.LAZY_RUNS = virtqueue.LAZY_RUNS, 0
    yield
    virtqueue.LAZY_RUNS = saved


@pytest.fixture
def mem():
    fd = os.memfd_create("guest")
    os.ftruncate(fd, BIG)
    os.pwrite(fd, random.Random(7).randbytes(MEM), 0)
    m = GuestMemory.from_table([(0, BIG, 0x7000_0000, 0)], [os.dup(fd)])
    yield fd, m
    m.close()
    os.close(fd)


def _walk(m, readable, writable):
    """A Linux-shaped table of (addr, len) buffers each way, walked by the queue."""
    entries = [(a, n, F_NEXT) for a, n in readable] + [(a, n, F_WRITE | F_NEXT) for a, n in writable]
    entries[-1] = entries[-1][:2] + (entries[-1][2] & ~F_NEXT,)
    table = b"".join(DESC.pack(a, n, f, i + 1) for i, (a, n, f) in enumerate(entries))
    got = virtqueue.Virtqueue(1)
    got.mem = m
    return got._walk_table(table, m.regions[0])


def test_the_walk_gives_guest_buffers_that_act_as_lists_of_views(mem):
    fd, m = mem
    pages = [0x9000, 0xa000, 0x3000, 0x20000]
    readable, writable, nr, nw = _walk(m, [(0x100, 40), (0x128, 40)], [(0x200, 16)] + [(p, PAGE) for p in pages])
    assert type(readable) is not list and type(writable) is not list, "the C walk was not used"
    assert (nr, nw) == (80, 16 + 4 * PAGE)
    assert len(readable) == 1 and len(writable) == 4         # adjacent buffers joined
    assert bytes(readable[0]) == os.pread(fd, 80, 0x100) == bytes(readable[-1])
    assert [len(v) for v in writable] == [16, 2 * PAGE, PAGE, PAGE]
    assert [bytes(v) for v in writable[1:]] == [os.pread(fd, 2 * PAGE, 0x9000), os.pread(fd, PAGE, 0x3000),
                                               os.pread(fd, PAGE, 0x20000)]
    assert len(writable[1:3]) == 2 and len(writable[5:]) == 0 and len(writable[::2]) == 2
    writable[0][:5] = b"reply"                               # live views of guest memory, not copies
    assert os.pread(fd, 5, 0x200) == b"reply"
    with pytest.raises(IndexError):
        writable[4]
    with pytest.raises(IndexError):
        writable[-5]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, MEM // PAGE - 3), st.integers(1, 3 * PAGE)), min_size=1, max_size=40),
       st.integers(0, 6 * PAGE), st.integers(0, 1 << 16), st.booleans())
def test_preadv_and_pwritev_move_what_os_preadv_and_pwritev_move(pages_lengths, file_size, offset, write):
    """Against os.preadv/os.pwritev over the same views: the same count
    (short at the end of the file), the same bytes in guest memory or in the
    file."""
    fd = os.memfd_create("guest")
    os.ftruncate(fd, MEM)
    m = GuestMemory.from_table([(0, MEM, 0x7000_0000, 0)], [os.dup(fd)])
    files = [os.memfd_create("file") for _ in range(2)]
    try:
        data = random.Random(file_size).randbytes(file_size)
        bufs = [(page * PAGE, length) for page, length in pages_lengths]
        for f in files:
            os.pwrite(f, data, 0)
        os.pwrite(fd, random.Random(offset).randbytes(MEM), 0)
        _, writable, _, _ = _walk(m, [(0x100, 40)], bufs)
        assert type(writable) is not list
        if write:
            got = writable.pwritev(files[0], offset)
            want = os.pwritev(files[1], list(writable), offset)
            assert got == want
            assert os.pread(files[0], MEM, 0) == os.pread(files[1], MEM, 0)
        else:
            got = writable.preadv(files[0], offset)
            after = [bytes(v) for v in writable]
            want = os.preadv(files[1], list(writable), offset)         # the same views, filled again
            assert got == want and [bytes(v) for v in writable] == after
        del writable
    finally:
        m.close()
        for f in files + [fd]:
            os.close(f)


def test_io_errors_are_those_of_the_kernel(mem):
    fd, m = mem
    _, writable, _, _ = _walk(m, [(0x100, 40)], [(0x10000 + 2 * PAGE * i, PAGE) for i in range(1025)])
    f = os.memfd_create("file")
    try:
        with pytest.raises(OSError) as e:                   # more buffers than the kernel takes
            writable.preadv(f, 0)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError) as e2:
            os.preadv(f, list(writable), 0)
        assert e2.value.errno == errno.EINVAL
        few = writable[:4]
        for offset in (-1, 1 << 63, (1 << 64) - 1):             # READ_IN's offset is the guest's u64
            with pytest.raises(OSError) as e:
                few.preadv(f, offset)
            assert e.value.errno == errno.EINVAL
        os.close(f)
        with pytest.raises(OSError) as e:
            few.pwritev(f, 0)
        assert e.value.errno == errno.EBADF
        ro = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        with pytest.raises(OSError) as e:
            few.preadv(ro, 0)
        assert e.value.errno == errno.EISDIR
        os.close(ro)
        assert few[:0].preadv(0, 0) == 0                     # nothing to move: no system call
    finally:
        try:
            os.close(f)
        except OSError:
            pass


def test_guest_buffers_keep_the_memory_mapped_while_they_live(mem):
    """The kernel is handed addresses, not views: a memory table replaced
    meanwhile (SET_MEM_TABLE) must not unmap them under a request."""
    fd, m = mem
    _, writable, _, _ = _walk(m, [(0x100, 40)], [(0x3000, PAGE)])
    region = m.regions[0]
    m.close()
    assert not region.map.closed
    f = os.memfd_create("file")
    os.pwrite(f, b"still mapped", 0)
    assert writable.preadv(f, 0) == 12 and bytes(writable[0][:12]) == b"still mapped"
    os.close(f)
    del writable
    region.close()
    assert region.map.closed


def test_only_directions_of_many_runs_are_lazy_and_a_kept_table_is_views(mem, monkeypatch):
    """A READ of a few pages gets a list of views, as does a table the queue
    keeps (its views are made once and used again); a READ of many pages in a
    table seen for the first time gets guest buffers."""
    monkeypatch.setattr(virtqueue, "LAZY_RUNS", 8)
    fd, m = mem
    few = [(0x10000 + 2 * PAGE * i, PAGE) for i in range(7)]
    many = [(0x10000 + 2 * PAGE * i, PAGE) for i in range(8)]
    readable, writable, _, _ = _walk(m, [(0x100, 40)], [(0x200, 16)] + few)
    assert type(readable) is list and type(writable) is list and len(writable) == 8
    readable, writable, _, _ = _walk(m, [(0x100, 40)], [(0x200, 16)] + many)
    assert type(readable) is list and type(writable) is not list and len(writable) == 9
    # through take(): first sighting lazy, second kept as views
    vq = virtqueue.Virtqueue(1)
    vq.size, vq.addrs = 4, (0x7000_0000, 0x7000_0000 + 0x1000, 0x7000_0000 + 0x2000)
    vq.attach(m)
    writes = [(0x200, 16)] + many
    entries = [(0x100, 40, F_NEXT)] + [(a, n, F_WRITE | F_NEXT) for a, n in writes]
    entries[-1] = entries[-1][:2] + (F_WRITE,)
    os.pwrite(fd, b"".join(DESC.pack(a, n, f, i + 1) for i, (a, n, f) in enumerate(entries)), 0x4000)
    os.pwrite(fd, DESC.pack(0x4000, 16 * len(entries), 4, 0), 0)        # head 0: the indirect table
    kinds = []
    for i in range(3):
        os.pwrite(fd, struct.pack("<HH", 0, 0), 0x2000 + 4 + 2 * (i % 4))
        os.pwrite(fd, struct.pack("<H", i + 1), 0x2002)
        head, (readable, writable, _, nw) = vq.take()
        assert head == 0 and nw == 16 + 8 * PAGE
        kinds.append(type(writable) is list)
        assert [bytes(v) for v in writable] == [os.pread(fd, n, a) for a, n in writes]
    assert kinds == [False, True, True]
    vq.detach()
