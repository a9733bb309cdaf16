"""The VFS core: FUSE node ids and open-file handles over one Backend.

Node ids are ours (never reused), each bound to one backend inode handle
(deduplicated by ``handle.key``) and carrying the kernel's lookup count:
every successful LOOKUP/CREATE/MKNOD/MKDIR/SYMLINK/LINK reply adds one,
FORGET takes n away, and at zero the node and its handle are dropped.
File handles (fh) name open file or directory objects of the backend.
"""
import errno
import logging
import os
import threading

from .backend import RENAME_EXCHANGE, RENAME_WHITEOUT, ROOT_CTX, Backend, Ctx, SetAttr
from .locks import LockTable

ROOT_ID = 1
NAME_MAX = 255
log = logging.getLogger("pyvirtiofsd.vfs")

# seconds the guest may cache entries/attributes, by --cache mode
CACHE_TIMEOUTS = {"never": 0.0, "metadata": 86400.0, "auto": 1.0, "always": 86400.0}


class Node:
    __slots__ = ("nodeid", "handle", "nlookup")

    def __init__(self, nodeid, handle, nlookup):
        self.nodeid, self.handle, self.nlookup = nodeid, handle, nlookup


class OpenFile:
    __slots__ = ("node", "obj", "flags", "is_dir", "lock_owners")

    def __init__(self, node, obj, flags, is_dir):
        self.node, self.obj, self.flags, self.is_dir = node, obj, flags, is_dir
        self.lock_owners = None     # owners that took POSIX locks through this file


def check_name(name: bytes) -> bytes:
    """A guest-supplied name must be one path component."""
    # bytes are tested for a byte by its value: `b"/" in name` would first
    # try b"/" as an int and format an error to throw away (~2,000 instructions)
    if not name or b"/"[0] in name or 0 in name or name in (b".", b".."):
        raise OSError(errno.EINVAL, "invalid name")
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    return name


class Vfs:
    def __init__(self, backend: Backend, *, cache: str = "auto"):
        if cache not in CACHE_TIMEOUTS:
            raise ValueError(f"unknown cache mode {cache!r}")
        self.backend = backend
        self.caps = backend.capabilities
        self.cache = cache
        self.entry_timeout = self.attr_timeout = CACHE_TIMEOUTS[cache]
        self._lock = threading.Lock()
        root = Node(ROOT_ID, backend.root(), 1)
        self._nodes = {ROOT_ID: root}
        self._by_key = {root.handle.key: root}
        self._next_nodeid = ROOT_ID + 1
        self._files = {}
        self._next_fh = 1
        self.locks = LockTable()

    # -- node table -------------------------------------------------------------
    def node(self, nodeid: int) -> Node:
        try:
            return self._nodes[nodeid]
        except KeyError:
            raise OSError(errno.ESTALE, f"unknown node id {nodeid}") from None

    def _remember(self, handle) -> Node:
        """Count one kernel reference to the inode behind handle."""
        with self._lock:
            node = self._by_key.get(handle.key)
            if node is None:
                node = Node(self._next_nodeid, handle, 1)
                self._next_nodeid += 1
                self._nodes[node.nodeid] = node
                self._by_key[handle.key] = node
                return node
            node.nlookup += 1
        self.backend.forget(handle)     # the node keeps its own reference
        return node

    def forget(self, nodeid: int, nlookup: int) -> None:
        with self._lock:
            node = self._nodes.get(nodeid)
            if node is None or nodeid == ROOT_ID:
                return
            node.nlookup -= nlookup
            if node.nlookup > 0:
                return
            del self._nodes[nodeid]
            if self._by_key.get(node.handle.key) is node:
                del self._by_key[node.handle.key]
        self.backend.forget(node.handle)

    def node_count(self) -> int:
        return len(self._nodes)

    def _entry(self, result):
        handle, attr = result
        return self._remember(handle).nodeid, attr

    # -- open files ----------------------------------------------------------------
    def _add_file(self, node, obj, flags, is_dir) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._files[fh] = OpenFile(node, obj, flags, is_dir)
        return fh

    def file(self, fh: int, is_dir: bool = False) -> OpenFile:
        f = self._files.get(fh)
        if f is None or f.is_dir != is_dir:
            raise OSError(errno.EBADF, f"unknown file handle {fh}")
        return f

    def _pop_file(self, fh: int, is_dir: bool) -> OpenFile:
        with self._lock:
            f = self._files.get(fh)
            if f is None or f.is_dir != is_dir:
                raise OSError(errno.EBADF, f"unknown file handle {fh}")
            del self._files[fh]
        return f

    def open_count(self) -> int:
        return len(self._files)

    # -- operations ------------------------------------------------------------------
    def lookup(self, ctx: Ctx, parent: int, name: bytes):
        return self._entry(self.backend.lookup(ctx, self.node(parent).handle, check_name(name)))

    def lookup_listed(self, ctx: Ctx, parent: int, entries) -> list:
        """READDIRPLUS: -> one (nodeid, attr) per entry just listed from
        parent, None where it could not be looked up."""
        found = self.backend.lookup_listed(ctx, self.node(parent).handle, entries)
        return [None if f is None else self._entry(f) for f in found]

    def getattr(self, ctx: Ctx, nodeid: int, fh=None):
        obj = self.file(fh).obj if fh is not None else None
        return self.backend.getattr(ctx, self.node(nodeid).handle, obj)

    def setattr(self, ctx: Ctx, nodeid: int, fh, changes: SetAttr):
        obj = self.file(fh).obj if fh is not None else None
        return self.backend.setattr(ctx, self.node(nodeid).handle, obj, changes)

    def readlink(self, ctx: Ctx, nodeid: int) -> bytes:
        return self.backend.readlink(ctx, self.node(nodeid).handle)

    def access(self, ctx: Ctx, nodeid: int, mask: int) -> None:
        self.backend.access(ctx, self.node(nodeid).handle, mask)

    def mknod(self, ctx, parent, name, mode, rdev):
        return self._entry(self.backend.mknod(ctx, self.node(parent).handle, check_name(name), mode, rdev))

    def mkdir(self, ctx, parent, name, mode):
        return self._entry(self.backend.mkdir(ctx, self.node(parent).handle, check_name(name), mode))

    def symlink(self, ctx, parent, name, target):
        if not self.caps.symlinks:
            raise OSError(errno.EPERM, "this backend has no symlinks")
        if not target or 0 in target or len(target) > 4095:
            raise OSError(errno.EINVAL if 0 in target or not target else errno.ENAMETOOLONG, "bad target")
        return self._entry(self.backend.symlink(ctx, self.node(parent).handle, check_name(name), target))

    def link(self, ctx, nodeid, newparent, newname):
        if not self.caps.hardlinks:
            raise OSError(errno.EPERM, "this backend has no hard links")
        return self._entry(self.backend.link(ctx, self.node(nodeid).handle,
                                             self.node(newparent).handle, check_name(newname)))

    def unlink(self, ctx, parent, name):
        self.backend.unlink(ctx, self.node(parent).handle, check_name(name))

    def rmdir(self, ctx, parent, name):
        self.backend.rmdir(ctx, self.node(parent).handle, check_name(name))

    def rename(self, ctx, parent, name, newparent, newname, flags=0):
        if (flags & RENAME_EXCHANGE and not self.caps.rename_exchange
                or flags & RENAME_WHITEOUT and not self.caps.rename_whiteout):
            raise OSError(errno.EINVAL, "rename flag not supported by this backend")
        self.backend.rename(ctx, self.node(parent).handle, check_name(name),
                            self.node(newparent).handle, check_name(newname), flags)

    def open(self, ctx, nodeid, flags) -> int:
        node = self.node(nodeid)
        return self._add_file(node, self.backend.open(ctx, node.handle, flags), flags, False)

    def create(self, ctx, parent, name, mode, flags):
        """-> (nodeid, attr, fh, created): created is False if an existing file was opened."""
        handle, attr, obj, created = self.backend.create(ctx, self.node(parent).handle, check_name(name),
                                                         mode, flags)
        node = self._remember(handle)
        return node.nodeid, attr, self._add_file(node, obj, flags, False), created

    def tmpfile(self, ctx, parent, mode, flags):
        handle, attr, obj = self.backend.tmpfile(ctx, self.node(parent).handle, mode, flags)
        node = self._remember(handle)
        return node.nodeid, attr, self._add_file(node, obj, flags, False)

    def read(self, ctx, fh, offset, views) -> int:
        return self.backend.read(ctx, self.file(fh).obj, offset, views)

    def write(self, ctx, fh, offset, views, kill_suidgid=False) -> int:
        return self.backend.write(ctx, self.file(fh).obj, offset, views, kill_suidgid)

    def flush(self, ctx, fh, lock_owner):
        f = self.file(fh)
        # close(2) of any descriptor drops the caller's POSIX locks on the inode
        self.locks.release_owner(f.node.handle.key, lock_owner)
        self.backend.flush(ctx, f.obj, lock_owner)

    def fsync(self, ctx, fh, datasync):
        self.backend.fsync(ctx, self.file(fh).obj, datasync)

    def release(self, ctx, fh, flock_owner=None):
        f = self._pop_file(fh, False)
        if flock_owner is not None:
            self.locks.release_owner(f.node.handle.key, flock_owner, flock=True)
        # Process-owned locks went at FLUSH (every close flushes its owner), so
        # what is left was taken by the open file description itself (OFD locks).
        for owner in f.lock_owners or ():
            self.locks.release_owner(f.node.handle.key, owner)
        self.backend.release(ctx, f.obj)

    def getlk(self, ctx, fh, owner, start, end, type_, flock=False):
        """-> the blocking lock as (start, end, type, pid), or None."""
        lk = self.locks.getlk(self.file(fh).node.handle.key, owner, start, end, type_, flock)
        return (lk.start, lk.end, lk.type, lk.pid) if lk else None

    def setlk(self, ctx, fh, owner, start, end, type_, flock=False, waiter=None):
        f = self.file(fh)
        self.locks.setlk(f.node.handle.key, owner, ctx.pid, start, end, type_, flock=flock, waiter=waiter)
        if not flock:
            if f.lock_owners is None:
                f.lock_owners = set()
            f.lock_owners.add(owner)

    def fallocate(self, ctx, fh, mode, offset, length):
        self.backend.fallocate(ctx, self.file(fh).obj, mode, offset, length)

    def lseek(self, ctx, fh, offset, whence) -> int:
        return self.backend.lseek(ctx, self.file(fh).obj, offset, whence)

    def copy_file_range(self, ctx, fh_in, off_in, fh_out, off_out, length, flags) -> int:
        return self.backend.copy_file_range(ctx, self.file(fh_in).obj, off_in,
                                            self.file(fh_out).obj, off_out, length, flags)

    def opendir(self, ctx, nodeid, flags) -> int:
        node = self.node(nodeid)
        return self._add_file(node, self.backend.opendir(ctx, node.handle, flags), flags, True)

    def readdir(self, ctx, fh, offset):
        return self.backend.readdir(ctx, self.file(fh, True).obj, offset)

    def readdir_at(self, ctx, nodeid, offset, size):
        """Listing with no directory open (capabilities.readdir_at)."""
        return self.backend.readdir_at(ctx, self.node(nodeid).handle, offset, size)

    def fsyncdir(self, ctx, fh, datasync):
        self.backend.fsyncdir(ctx, self.file(fh, True).obj, datasync)

    def fsyncdir_at(self, ctx, nodeid, datasync):
        """FSYNCDIR of a directory the guest has no handle for."""
        handle = self.node(nodeid).handle
        obj = self.backend.opendir(ctx, handle, os.O_RDONLY)
        try:
            self.backend.fsyncdir(ctx, obj, datasync)
        finally:
            self.backend.releasedir(ctx, obj)

    def releasedir(self, ctx, fh):
        self.backend.releasedir(ctx, self._pop_file(fh, True).obj)

    def _need_xattrs(self):
        if not self.caps.xattrs:
            raise OSError(errno.EOPNOTSUPP, "this backend has no xattrs")

    def setxattr(self, ctx, nodeid, name, value, flags):
        self._need_xattrs()
        self.backend.setxattr(ctx, self.node(nodeid).handle, _xattr_name(name), value, flags)

    def getxattr(self, ctx, nodeid, name):
        """-> the value, or None when the file has no such attribute."""
        self._need_xattrs()
        return self.backend.find_xattr(ctx, self.node(nodeid).handle, _xattr_name(name))

    def listxattr(self, ctx, nodeid) -> list:
        self._need_xattrs()
        return self.backend.listxattr(ctx, self.node(nodeid).handle)

    def removexattr(self, ctx, nodeid, name):
        self._need_xattrs()
        self.backend.removexattr(ctx, self.node(nodeid).handle, _xattr_name(name))

    def statfs(self, ctx, nodeid):
        return self.backend.statfs(ctx, self.node(nodeid).handle)

    def syncfs(self, ctx):
        self.backend.syncfs(ctx)

    def reset(self) -> None:
        """DESTROY: the guest unmounted. Close every open file, forget every
        node but the root; a later INIT starts afresh."""
        with self._lock:
            files, self._files = self._files, {}
            nodes = [n for n in self._nodes.values() if n.nodeid != ROOT_ID]
            root = self._nodes[ROOT_ID]
            self._nodes = {ROOT_ID: root}
            self._by_key = {root.handle.key: root}
        for f in files.values():
            try:
                (self.backend.releasedir if f.is_dir else self.backend.release)(ROOT_CTX, f.obj)
            except OSError as e:
                log.warning("release at reset: %s", e)
        for n in nodes:
            self.backend.forget(n.handle)

    def destroy(self) -> None:
        self.reset()
        self.backend.destroy()


def _xattr_name(name: bytes) -> bytes:
    if not name or 0 in name:               # (a NUL byte: see check_name)
        raise OSError(errno.EINVAL, "invalid xattr name")
    if len(name) > 255:
        raise OSError(errno.ERANGE, "xattr name too long")
    return name
