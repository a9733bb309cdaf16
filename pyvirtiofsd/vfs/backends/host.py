"""Passthrough of a host directory.

Each inode is held by an O_PATH|O_NOFOLLOW descriptor opened relative to
its parent's descriptor, so no guest-supplied path is ever resolved on the
host: names are single components, symlinks are never followed here (the
guest resolves them in its own namespace), and a rename race cannot lead a
lookup outside the export. Files are reopened through /proc/self/fd/N, which
reaches exactly the inode held (a magic link, not a path walk) — only for
regular files and directories; a symlink there would be refused with ELOOP.

New objects are created under the caller's filesystem uid/gid (setfsuid and
setfsgid act per thread), so the host kernel assigns owners, applies
setgid-directory inheritance and checks the caller's permissions. The
process umask is set to 0 at start and the request's umask is applied here;
with POSIX ACLs on, each creating thread gets its own umask (unshare
CLONE_FS) set to the request's, so the host kernel ignores it where the
parent directory has a default ACL, as Linux does.
"""
import errno
import os
import stat
import struct
import threading
from contextlib import contextmanager

from ... import syscalls
from ..backend import NOW, Backend, Capabilities, Consistency, DirEntry, StatFs

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# flags the guest may not pass through to the host open
DROP_OPEN_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW
WHITEOUT_DEV = 0
DIRENT64 = struct.Struct("<QqHB")       # linux_dirent64: d_ino d_off d_reclen d_type, then the name


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class HostInode:
    __slots__ = ("fd", "key", "ftype", "refs")

    def __init__(self, fd, st):
        self.fd = fd
        self.key = (st.st_dev, st.st_ino)
        self.ftype = stat.S_IFMT(st.st_mode)
        self.refs = 1               # handed out this many times, not yet forgotten

    def __repr__(self):
        return f"HostInode(fd={self.fd}, key={self.key})"


class HostFile:
    __slots__ = ("fd", "inode")

    def __init__(self, fd, inode):
        self.fd, self.inode = fd, inode


class HostDir:
    __slots__ = ("fd", "inode", "entries")

    def __init__(self, fd, inode):
        self.fd, self.inode, self.entries = fd, inode, None


def check_name(name: bytes) -> bytes:
    if not name or b"/"[0] in name or 0 in name or name in (b".", b".."):     # (bytes by value: see vfs.check_name)
        raise OSError(errno.EINVAL, "invalid name")
    return name


_thread = threading.local()


def _thread_umask(umask):
    """This thread's own umask (its fs_struct unshared on first use)."""
    if not getattr(_thread, "own_fs", False):
        syscalls.unshare(syscalls.CLONE_FS)
        _thread.own_fs = True
    os.umask(umask)


@contextmanager
def caller_creds(ctx):
    """Create as the caller: this thread's fsuid/fsgid for the duration."""
    if ctx.uid == 0 and ctx.gid == 0:
        yield
        return
    syscalls.setfsgid(ctx.gid)
    syscalls.setfsuid(ctx.uid)
    try:
        yield
    finally:
        syscalls.setfsuid(0)
        syscalls.setfsgid(0)


class HostBackend(Backend):
    consistency = Consistency.STRONG

    def __init__(self, root_dir: str, *, xattr: bool = True, allow_devices: bool = False,
                 posix_acl: bool = False):
        self.root_dir = os.path.realpath(root_dir)
        self.xattr = xattr
        self.allow_devices = allow_devices
        self.posix_acl = posix_acl and xattr
        self.capabilities = Capabilities(mknod=allow_devices, xattrs=xattr, posix_acl=self.posix_acl,
                                         readdir_at=True)
        os.umask(0)
        fd = os.open(self.root_dir, O_PATH_FLAGS | os.O_DIRECTORY)
        self._root = HostInode(fd, os.fstat(fd))
        # the inodes handed out and not forgotten, by key: a lookup of one of
        # them needs only a stat, not an open and a close
        self._inodes = {}
        self._inodes_lock = threading.Lock()
        # descriptors are reopened relative to this: a shorter walk than /proc/self/fd/N
        self._proc_fd = os.open("/proc/self/fd", O_PATH_FLAGS | os.O_DIRECTORY)

    # -- inodes ---------------------------------------------------------------------
    def root(self):
        return self._root

    def _perm(self, ctx, mode):
        """Permission bits to create with. With ACLs the host kernel applies
        the request's umask itself (unless a default ACL is there)."""
        if self.posix_acl:
            _thread_umask(ctx.umask)
            return mode & 0o7777
        return mode & 0o7777 & ~ctx.umask

    def _open_inode(self, parent, name):
        fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self._inode(fd, st), st

    def _held(self, key):
        """Our handle of the inode key, with one more reference; None if we
        hold none. Call with _inodes_lock held."""
        h = self._inodes.get(key)
        if h is not None:
            h.refs += 1
        return h

    def _inode(self, fd, st):
        """The handle for the inode that fd (ours to keep or close) holds."""
        key = (st.st_dev, st.st_ino)
        with self._inodes_lock:
            h = self._held(key)
            if h is None:
                h = self._inodes[key] = HostInode(fd, st)
                return h
        os.close(fd)
        return h

    def lookup(self, ctx, parent, name):
        return self._lookup(parent, check_name(name))

    def _lookup(self, parent, name):
        # the name's inode, if we hold it already: its key cannot belong to
        # another inode while our descriptor keeps it alive
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        with self._inodes_lock:
            h = self._held((st.st_dev, st.st_ino))
        if h is not None:
            return h, st
        return self._open_inode(parent, name)

    def lookup_entry(self, ctx, parent, entry):
        # The inode number the listing gave says whether we may hold the
        # entry's inode: if not, open it at once (a new inode needs the open
        # and an fstat) rather than stat it first. A hint only: the open by
        # name decides, and _inode finds a held inode again by its key.
        # (The names are the host's own, as listed: no check_name.)
        if (parent.key[0], entry.ino) in self._inodes:
            return self._lookup(parent, entry.name)
        return self._open_inode(parent, entry.name)

    def forget(self, handle):
        if handle is self._root:
            return
        with self._inodes_lock:
            handle.refs -= 1
            if handle.refs:
                return
            if self._inodes.get(handle.key) is handle:
                del self._inodes[handle.key]
        os.close(handle.fd)

    def getattr(self, ctx, handle, file=None):
        return os.fstat(file.fd if file is not None else handle.fd)

    def setattr(self, ctx, h, file, ch):
        if ch.mode is not None:
            if h.ftype == stat.S_IFLNK:
                raise OSError(errno.EOPNOTSUPP, "symlinks have no mode to change")
            os.chmod(_proc(h.fd), ch.mode)
        if ch.uid is not None or ch.gid is not None:
            syscalls.fchownat(h.fd, "", -1 if ch.uid is None else ch.uid,
                              -1 if ch.gid is None else ch.gid,
                              syscalls.AT_EMPTY_PATH | syscalls.AT_SYMLINK_NOFOLLOW)
        if ch.size is not None:
            self._truncate(h, file, ch.size)
        if ch.kill_suidgid and ch.mode is None:
            self._kill_suidgid(h.fd)
        if ch.atime is not None or ch.mtime is not None:
            syscalls.utimensat(h.fd, "", None if ch.atime in (None, NOW) else ch.atime,
                               None if ch.mtime in (None, NOW) else ch.mtime,
                               syscalls.AT_EMPTY_PATH | syscalls.AT_SYMLINK_NOFOLLOW,
                               atime_now=ch.atime is NOW, mtime_now=ch.mtime is NOW)
        return os.fstat(h.fd)

    def _truncate(self, h, file, size):
        if file is not None:
            os.ftruncate(file.fd, size)
            return
        if h.ftype == stat.S_IFDIR:
            raise OSError(errno.EISDIR, "is a directory")
        if h.ftype != stat.S_IFREG:
            raise OSError(errno.EINVAL, "not a regular file")
        fd = os.open(_proc(h.fd), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    @staticmethod
    def _kill_suidgid(fd):
        """Clear setuid, and setgid with group-exec, as a write by a
        non-root caller would (we write as root, so the kernel won't), and as
        chown does to any file but a directory (a fifo's too)."""
        mode = os.fstat(fd).st_mode
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if not stat.S_ISDIR(mode) and mode & kill:
            os.chmod(_proc(fd), stat.S_IMODE(mode) & ~kill)

    def readlink(self, ctx, h):
        if h.ftype != stat.S_IFLNK:
            raise OSError(errno.EINVAL, "not a symlink")
        return os.readlink(b"", dir_fd=h.fd)

    def access(self, ctx, h, mask):
        st = os.fstat(h.fd)
        mask &= os.R_OK | os.W_OK | os.X_OK
        if ctx.uid == 0:
            if mask & os.X_OK and not (stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111):
                raise OSError(errno.EACCES, "no execute bit")
            return
        if ctx.uid == st.st_uid:
            bits = st.st_mode >> 6
        elif ctx.gid == st.st_gid:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        if mask & ~bits & 0o7:
            raise OSError(errno.EACCES, "permission denied")

    # -- namespace ------------------------------------------------------------------
    def mknod(self, ctx, parent, name, mode, rdev):
        name = check_name(name)
        perm = self._perm(ctx, mode)
        ftype = stat.S_IFMT(mode)
        with caller_creds(ctx):
            if ftype == stat.S_IFREG:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, perm,
                                 dir_fd=parent.fd))
            elif ftype in (stat.S_IFIFO, stat.S_IFSOCK):
                os.mknod(name, ftype | perm, dir_fd=parent.fd)
            elif ftype in (stat.S_IFCHR, stat.S_IFBLK):
                # a 0/0 character device is an overlay whiteout, not a device
                if not self.allow_devices and not (ftype == stat.S_IFCHR and rdev == WHITEOUT_DEV):
                    raise OSError(errno.EPERM, "device nodes are not allowed in this export")
                os.mknod(name, ftype | perm, rdev, dir_fd=parent.fd)
            else:
                raise OSError(errno.EINVAL, "bad file type")
        return self._open_inode(parent, name)

    def mkdir(self, ctx, parent, name, mode):
        name = check_name(name)
        with caller_creds(ctx):
            os.mkdir(name, self._perm(ctx, mode), dir_fd=parent.fd)
        return self._open_inode(parent, name)

    def symlink(self, ctx, parent, name, target):
        name = check_name(name)
        with caller_creds(ctx):
            os.symlink(target, name, dir_fd=parent.fd)
        return self._open_inode(parent, name)

    def link(self, ctx, h, newparent, newname):
        newname = check_name(newname)
        if h.ftype == stat.S_IFDIR:
            raise OSError(errno.EPERM, "hard link to a directory")
        # the magic link names exactly the inode held, symlinks included
        syscalls.linkat(syscalls.AT_FDCWD, _proc(h.fd), newparent.fd, newname, syscalls.AT_SYMLINK_FOLLOW)
        return self._open_inode(newparent, newname)

    def unlink(self, ctx, parent, name):
        os.unlink(check_name(name), dir_fd=parent.fd)

    def rmdir(self, ctx, parent, name):
        os.rmdir(check_name(name), dir_fd=parent.fd)

    def rename(self, ctx, parent, name, newparent, newname, flags=0):
        syscalls.renameat2(parent.fd, check_name(name), newparent.fd, check_name(newname), flags)

    # -- files ----------------------------------------------------------------------
    def _reopen(self, h, flags):
        if h.ftype == stat.S_IFLNK:
            raise OSError(errno.ELOOP, "is a symlink")
        if h.ftype not in (stat.S_IFREG, stat.S_IFDIR):
            # fifos would block a worker, device nodes reach host devices
            raise OSError(errno.ENXIO, "special files are not opened on the host")
        return self._reopen_fd(h.fd, (flags & ~DROP_OPEN_FLAGS) | os.O_CLOEXEC)

    def _reopen_fd(self, fd, flags):
        """Open what fd holds, through its magic link (not a path walk)."""
        return os.open(str(fd), flags, dir_fd=self._proc_fd)

    def open(self, ctx, h, flags):
        return HostFile(self._reopen(h, flags), h)

    def create(self, ctx, parent, name, mode, flags):
        name = check_name(name)
        base = (flags & ~(os.O_NOCTTY | os.O_DIRECTORY | os.O_EXCL)) | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        perm = self._perm(ctx, mode)
        with caller_creds(ctx):
            # O_EXCL first, to know whether we made the file (a file that only
            # vanishes between the two opens is made by the second: counted as existing)
            try:
                fd, created = os.open(name, base | os.O_EXCL, perm, dir_fd=parent.fd), True
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                fd, created = os.open(name, base, perm, dir_fd=parent.fd), False
        return (*self._inode_of_open(fd), created)

    def tmpfile(self, ctx, parent, mode, flags):
        with caller_creds(ctx):
            fd = os.open(_proc(parent.fd), (flags & ~(DROP_OPEN_FLAGS | os.O_DIRECTORY))
                         | os.O_TMPFILE | os.O_CLOEXEC, self._perm(ctx, mode))
        return self._inode_of_open(fd)

    def _inode_of_open(self, fd):
        try:
            # follow the magic link (no O_NOFOLLOW): it names the file just opened
            pfd = self._reopen_fd(fd, os.O_PATH | os.O_CLOEXEC)
            st = os.fstat(pfd)
        except BaseException:
            os.close(fd)
            raise
        h = self._inode(pfd, st)
        return h, st, HostFile(fd, h)

    def read(self, ctx, file, offset, views):
        if type(views) is not list:     # guest buffers the C walk found: they do their own preadv
            return views.preadv(file.fd, offset)
        return os.preadv(file.fd, views, offset) if views else 0

    def write(self, ctx, file, offset, views, kill_suidgid=False):
        if kill_suidgid:
            self._kill_suidgid(file.fd)
        if type(views) is not list:
            return views.pwritev(file.fd, offset)
        return os.pwritev(file.fd, views, offset) if views else 0

    def flush(self, ctx, file, lock_owner):
        # close a duplicate: network file systems underneath write back on close
        os.close(os.dup(file.fd))

    def fsync(self, ctx, file, datasync):
        (os.fdatasync if datasync else os.fsync)(file.fd)

    def release(self, ctx, file):
        os.close(file.fd)

    def fallocate(self, ctx, file, mode, offset, length):
        syscalls.fallocate(file.fd, mode, offset, length)

    def lseek(self, ctx, file, offset, whence):
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "bad whence")
        return os.lseek(file.fd, offset, whence)

    def copy_file_range(self, ctx, fin, off_in, fout, off_out, length, flags):
        if flags:
            raise OSError(errno.EINVAL, "copy_file_range flags must be 0")
        return os.copy_file_range(fin.fd, fout.fd, length, off_in, off_out)

    # -- directories ------------------------------------------------------------------
    def opendir(self, ctx, h, flags):
        return HostDir(self._dir_fd(h), h)

    def _dir_fd(self, h):
        """A readable descriptor of the directory h (ours to close)."""
        if h.ftype != stat.S_IFDIR:
            raise OSError(errno.ENOTDIR, "not a directory")
        return self._reopen_fd(h.fd, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def readdir(self, ctx, d, offset):
        # a snapshot per opendir (and per rewind) keeps cookies stable
        if d.entries is None or offset == 0:
            d.entries = self._list(d)
        return iter(d.entries[offset:])

    def _list(self, d):
        own = d.inode.key[1]
        parent = own if d.inode is self._root else os.stat("..", dir_fd=d.fd).st_ino
        out = [DirEntry(b".", own, stat.S_IFDIR >> 12, 1), DirEntry(b"..", parent, stat.S_IFDIR >> 12, 2)]
        with os.scandir(_proc(d.fd).encode()) as it:
            for e in it:
                out.append(DirEntry(e.name, e.inode(), _dtype(e), len(out) + 1))
        return out

    def readdir_at(self, ctx, h, offset, size):
        # the host's own cookies (d_off), valid with nothing open
        fd = self._dir_fd(h)
        try:
            if offset:
                os.lseek(fd, offset - (1 << 64) if offset >> 63 else offset, os.SEEK_SET)
            raw = syscalls.getdents64(fd, min(max(size, 1024), 1 << 16))
        finally:
            os.close(fd)
        out = []
        pos, end = 0, len(raw)
        while pos < end:
            ino, off, reclen, dtype = DIRENT64.unpack_from(raw, pos)
            name = raw[pos + DIRENT64.size:raw.index(0, pos + DIRENT64.size, pos + reclen)]
            if name == b".." and h is self._root:
                ino = h.key[1]          # (nothing of the host above the export)
            out.append(DirEntry(name, ino, dtype, off & 0xFFFF_FFFF_FFFF_FFFF))
            pos += reclen
        return out

    def fsyncdir(self, ctx, d, datasync):
        (os.fdatasync if datasync else os.fsync)(d.fd)

    def releasedir(self, ctx, d):
        os.close(d.fd)

    # -- xattrs -------------------------------------------------------------------------
    # paths through /proc/self/fd reach the held inode itself, symlinks included
    def _need_xattr(self):
        if not self.xattr:
            raise OSError(errno.EOPNOTSUPP, "xattrs are off for this export")

    def setxattr(self, ctx, h, name, value, flags):
        self._need_xattr()
        os.setxattr(_proc(h.fd), name, value, flags)

    def getxattr(self, ctx, h, name):
        self._need_xattr()
        return os.getxattr(_proc(h.fd), name)

    def find_xattr(self, ctx, h, name):
        # (a missing attribute costs one system call and no exception)
        self._need_xattr()
        path = _proc(h.fd)
        if syscalls.getxattr_size(path, name) is None:
            return None
        return os.getxattr(path, name)

    def listxattr(self, ctx, h):
        self._need_xattr()
        return [os.fsencode(n) for n in os.listxattr(_proc(h.fd))]

    def removexattr(self, ctx, h, name):
        self._need_xattr()
        os.removexattr(_proc(h.fd), name)

    # -- filesystem ---------------------------------------------------------------------
    def statfs(self, ctx, h):
        s = os.fstatvfs(h.fd)
        return StatFs(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_bsize,
                      s.f_namemax, s.f_frsize)

    def syncfs(self, ctx):
        fd = os.open(_proc(self._root.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.syncfs(fd)
        finally:
            os.close(fd)

    def destroy(self):
        os.close(self._root.fd)
        os.close(self._proc_fd)


def _dtype(entry) -> int:
    # (most entries are files, then directories)
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG >> 12
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR >> 12
    if entry.is_symlink():
        return stat.S_IFLNK >> 12
    return stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode) >> 12
