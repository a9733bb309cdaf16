"""Linux system calls the os module lacks, through cffi in ABI mode
(no compiler needed at install time). Each raises OSError on failure."""
import errno
import os

from cffi import FFI

ffi = FFI()
ffi.cdef("""
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
    long syscall(long number, ...);
    int setfsuid(unsigned int fsuid);
    int setfsgid(unsigned int fsgid);
    int fallocate(int fd, int mode, long offset, long len);
    int syncfs(int fd);
    int mount(const char *source, const char *target, const char *fstype,
              unsigned long flags, const void *data);
    int umount2(const char *target, int flags);
    int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags);
    int fchownat(int dirfd, const char *pathname, unsigned int owner, unsigned int group, int flags);
    int mknodat(int dirfd, const char *pathname, unsigned int mode, unsigned long dev);
    struct timespec { long tv_sec; long tv_nsec; };
    int utimensat(int dirfd, const char *pathname, const struct timespec times[2], int flags);
    struct file_handle { unsigned int handle_bytes; int handle_type; unsigned char f_handle[128]; };
    int name_to_handle_at(int dirfd, const char *pathname, struct file_handle *handle,
                          int *mount_id, int flags);
    int open_by_handle_at(int mount_fd, struct file_handle *handle, int flags);
    int setgroups(size_t size, const unsigned int *list);
    struct open_how { unsigned long long flags; unsigned long long mode; unsigned long long resolve; };
    int unshare(int flags);
    long getdents64(int fd, void *dirp, size_t count);
    long getxattr(const char *path, const char *name, void *value, size_t size);
    int *__errno_location(void);
""")
libc = ffi.dlopen(None)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
FALLOC_FL_UNSHARE_RANGE = 0x40
CLONE_FS = 0x200
MNT_DETACH = 2
MS_NOSUID = 2
MS_NODEV = 4
_SYS_OPENAT2 = 437
_SYS_SETRESUID = 117     # per-thread (the raw syscall, not glibc's process-wide wrapper)
_SYS_SETRESGID = 119
_SYS_SETGROUPS = 116


def _errno():
    return ffi.errno


def _check(rc, what, path=None):
    if rc < 0:
        e = _errno()
        raise OSError(e, f"{what}: {os.strerror(e)}", path)
    return rc


def _b(p):
    return os.fsencode(p) if p is not None else ffi.NULL


def renameat2(olddirfd, oldname, newdirfd, newname, flags=0):
    _check(libc.renameat2(olddirfd, _b(oldname), newdirfd, _b(newname), flags), "renameat2", oldname)


def openat2(dirfd, path, flags, mode=0, resolve=0):
    how = ffi.new("struct open_how *", {"flags": flags, "mode": mode, "resolve": resolve})
    cpath = ffi.new("char[]", os.fsencode(path))
    return _check(libc.syscall(_SYS_OPENAT2, ffi.cast("long", dirfd), cpath, how,
                               ffi.cast("long", ffi.sizeof("struct open_how"))), "openat2", path)


def setfsuid(uid):
    """Set this thread's filesystem uid; returns the previous one."""
    return libc.setfsuid(uid)


def setfsgid(gid):
    return libc.setfsgid(gid)


def fallocate(fd, mode, offset, length):
    _check(libc.fallocate(fd, mode, offset, length), "fallocate")


def unshare(flags):
    _check(libc.unshare(flags), "unshare")


def getdents64(fd, size):
    """One getdents64(2) of up to size bytes: packed linux_dirent64 records
    (b"" at the end of the directory)."""
    buf = ffi.new("char[]", size)
    n = _check(libc.getdents64(fd, buf, size), "getdents64")
    return ffi.buffer(buf, n)[:]


def getxattr_size(path, name):
    """The size of path's extended attribute name (symlinks followed), or
    None when it has none: the common answer, without an exception."""
    n = libc.getxattr(_b(path), name, ffi.NULL, 0)
    if n < 0 and _errno() == errno.ENODATA:
        return None
    return _check(n, "getxattr", path)


def syncfs(fd):
    _check(libc.syncfs(fd), "syncfs")


def mount(source, target, fstype, flags=0, data=None):
    _check(libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount2(target, flags=0):
    _check(libc.umount2(_b(target), flags), "umount2", target)


def linkat(olddirfd, oldname, newdirfd, newname, flags=0):
    _check(libc.linkat(olddirfd, _b(oldname), newdirfd, _b(newname), flags), "linkat", oldname)


def fchownat(dirfd, name, uid, gid, flags=0):
    """uid/gid of -1 (0xffffffff) leave that id unchanged."""
    _check(libc.fchownat(dirfd, _b(name), uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, flags), "fchownat", name)


def mknodat(dirfd, name, mode, dev=0):
    _check(libc.mknodat(dirfd, _b(name), mode, dev), "mknodat", name)


def _timespec(ns, now):
    """(tv_sec, tv_nsec) for utimensat: UTIME_NOW, UTIME_OMIT for None, or ns."""
    return (0, UTIME_NOW) if now else (0, UTIME_OMIT) if ns is None else divmod(ns, 1_000_000_000)


def utimensat(dirfd, name, atime_ns=None, mtime_ns=None, flags=0, *, atime_now=False, mtime_now=False):
    """Set times in nanoseconds; None leaves a time unchanged (UTIME_OMIT).
    name "" with AT_EMPTY_PATH works on dirfd itself (O_PATH descriptors too)."""
    ts = ffi.new("struct timespec[2]", (_timespec(atime_ns, atime_now), _timespec(mtime_ns, mtime_now)))
    _check(libc.utimensat(dirfd, ffi.NULL if name is None else _b(name), ts, flags), "utimensat", name)


def name_to_handle_at(dirfd, name, flags=0):
    """-> (handle_type, handle bytes, mount_id)."""
    fh = ffi.new("struct file_handle *")
    fh.handle_bytes = 128
    mnt = ffi.new("int *")
    _check(libc.name_to_handle_at(dirfd, _b(name), fh, mnt, flags), "name_to_handle_at", name)
    return fh.handle_type, bytes(ffi.buffer(fh.f_handle, fh.handle_bytes)), mnt[0]


def open_by_handle_at(mount_fd, handle_type, handle, flags):
    fh = ffi.new("struct file_handle *")
    fh.handle_bytes = len(handle)
    fh.handle_type = handle_type
    ffi.memmove(fh.f_handle, handle, len(handle))
    return _check(libc.open_by_handle_at(mount_fd, fh, flags), "open_by_handle_at")


def set_thread_creds(uid, gid, groups=()):
    """Switch this thread's effective uid/gid (the raw syscalls act per thread;
    glibc's wrappers would change every thread). Returns nothing; use
    set_thread_creds(0, 0) to go back to root."""
    arr = ffi.new("unsigned int[]", list(groups) or [0])
    # back to euid 0 first (the saved uid stays 0), so the rest is permitted
    _check(libc.syscall(_SYS_SETRESUID, ffi.cast("long", -1), ffi.cast("long", 0), ffi.cast("long", -1)), "setresuid")
    _check(libc.syscall(_SYS_SETGROUPS, ffi.cast("long", len(groups)), arr), "setgroups")
    _check(libc.syscall(_SYS_SETRESGID, ffi.cast("long", -1), ffi.cast("long", gid), ffi.cast("long", -1)), "setresgid")
    _check(libc.syscall(_SYS_SETRESUID, ffi.cast("long", -1), ffi.cast("long", uid), ffi.cast("long", -1)), "setresuid")
