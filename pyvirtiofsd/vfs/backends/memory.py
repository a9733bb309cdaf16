"""A tmpfs-like tree in RAM, with Linux semantics implemented here.

The host kernel's tmpfs is the oracle (tests/test_memory_backend.py and
tests/test_differential_memory.py compare the two). Path permission checks
(search/write on directories, read/write on open) are the kernel's job under
default_permissions, which virtio-fs guests and our /dev/fuse mounts use;
what a filesystem itself decides is done here: ownership and mode changes,
times, sticky directories, killing setuid/setgid, link counts, rename rules,
xattr namespaces, limits.

Space is accounted as tmpfs does it, so statfs agrees with a tmpfs of the
same size and nr_inodes:
  - data in 4 KiB pages kept in a dict (files are sparse at page
    granularity: SEEK_DATA/SEEK_HOLE and st_blocks agree), plus one page for
    a symlink target of 128 bytes or more;
  - "inode space" of 1 KiB per inode and per extra hard link (a dentry), and
    40 + len(name) + len(value) bytes per xattr;
  - an inode that lost its last name lives on, data included, until its
    last open file or directory is released.
Reads do not update atime (as with noatime; docs/compat.md).
"""
import errno
import itertools
import os
import stat
import struct
import threading
import time

from ..backend import (NOW, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, Attr, Backend,
                       Capabilities, Consistency, DirEntry, StatFs)

PAGE = 4096
MAX_FILE_SIZE = (1 << 63) - 1            # tmpfs s_maxbytes (MAX_LFS_FILESIZE)
INODE_SPACE = 1024                       # tmpfs BOGO_INODE_SIZE
XATTR_OVERHEAD = 40                      # tmpfs simple_xattr_space()
SHORT_SYMLINK = 128                      # longer targets take a page in tmpfs
UNLIMITED_BLOCKS = (1 << 40) // PAGE
UNLIMITED_INODES = 1 << 32
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")
ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")
ACL_VERSION = 2
ACL_ENTRY = struct.Struct("<HHI")
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SGID_EXEC = stat.S_ISGID | stat.S_IXGRP


def _now():
    return time.time_ns()


def _err(code, msg):
    return OSError(code, msg)


class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "rdev", "atime", "mtime", "ctime",
                 "xattrs", "pages", "unwritten", "size", "target", "entries", "seq", "parent",
                 "tmpfile", "opens", "freed")

    def __init__(self, ino, mode, uid, gid, rdev=0):
        t = _now()
        self.ino, self.mode, self.uid, self.gid, self.rdev = ino, mode, uid, gid, rdev
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.atime = self.mtime = self.ctime = t
        self.xattrs = {}
        self.pages = {}           # regular files: page index -> bytearray(PAGE)
        self.unwritten = set()    # pages fallocate reserved: holes to SEEK_DATA, as in tmpfs
        self.size = 0
        self.target = b""         # symlinks
        self.entries = {} if stat.S_ISDIR(mode) else None   # name -> (cookie, Inode)
        self.seq = 3              # next readdir cookie (1 and 2 are '.' and '..')
        self.parent = None        # directories only
        self.tmpfile = False      # O_TMPFILE: may be linked while it has no name
        self.opens = 0            # open files and directories
        self.freed = False        # no name, not open: data and space given back

    @property
    def key(self):
        return self.ino

    def is_dir(self):
        return stat.S_ISDIR(self.mode)

    def is_reg(self):
        return stat.S_ISREG(self.mode)

    def long_target(self):
        return stat.S_ISLNK(self.mode) and len(self.target) >= SHORT_SYMLINK and not self.freed

    def attr(self):
        blocks = (len(self.pages) + self.long_target()) * (PAGE // 512)
        # tmpfs counts 20 bogus bytes per directory entry, '.' and '..' included
        size = 40 + 20 * len(self.entries) if self.entries is not None else self.size
        return Attr(self.ino, size, blocks, self.atime, self.mtime, self.ctime, self.mode,
                    self.nlink, self.uid, self.gid, self.rdev, PAGE)

    def touch(self, t=None):
        """mtime and ctime to now (or t)."""
        self.mtime = self.ctime = t or _now()

    def xattr_space(self):
        return sum(_xattr_space(n, v) for n, v in self.xattrs.items())


def _xattr_space(name, value):
    return XATTR_OVERHEAD + len(name) + len(value)


class OpenFile:
    __slots__ = ("inode", "flags", "released")

    def __init__(self, inode, flags):
        self.inode, self.flags, self.released = inode, flags, False


def _allowed(ctx, h, mask):
    """generic_permission(): root bypasses r/w, and x where some x bit is set."""
    mask &= os.R_OK | os.W_OK | os.X_OK
    if ctx.uid == 0:
        return not mask & os.X_OK or h.is_dir() or bool(h.mode & 0o111)
    bits = h.mode >> 6 if ctx.uid == h.uid else h.mode >> 3 if ctx.gid == h.gid else h.mode
    return not mask & ~bits & 0o7


def _kill_suidgid(h, ctx, t=None):
    """What Linux does on write/truncate/fallocate by the unprivileged and
    on chown (should_remove_suid(), setattr_should_drop_sgid()): setuid goes;
    setgid too when group-executable, or when the caller is not in the
    file's group (only ctx.gid is known: supplementary groups are not)."""
    kill = stat.S_ISUID
    if h.mode & stat.S_IXGRP or ctx is not None and ctx.uid != 0 and ctx.gid != h.gid:
        kill |= stat.S_ISGID
    if not h.is_dir() and h.mode & kill:
        h.mode &= ~kill
        h.ctime = t or _now()


def _check_acl(value):
    """A POSIX ACL xattr: a version 2 header and whole 8-byte entries."""
    if len(value) < 4 or (len(value) - 4) % ACL_ENTRY.size or struct.unpack_from("<I", value)[0] != ACL_VERSION:
        raise _err(errno.EINVAL, "malformed POSIX ACL")


class MemoryBackend(Backend):
    consistency = Consistency.STRONG

    def __init__(self, *, max_bytes=None, max_inodes=None, allow_devices=False, name_max=255,
                 link_max=65000, xattr_size_max=65536, prefill=None):
        self.max_bytes, self.max_inodes = max_bytes, max_inodes
        self.allow_devices, self.name_max, self.link_max = allow_devices, name_max, link_max
        self.xattr_size_max = xattr_size_max
        self.capabilities = Capabilities(mknod=allow_devices)
        self._lock = threading.RLock()
        self._inos = itertools.count(1)
        self._ispace = 0          # inode space in use (bytes, see the module doc)
        self._pages = 0           # pages in use
        self._root = self._new(stat.S_IFDIR | 0o755, 0, 0)
        self._root.parent = self._root
        if prefill is not None:
            from .prefill import prefill as fill
            fill(self, prefill)

    # -- space -----------------------------------------------------------------------------------
    def _reserve_ispace(self, n):
        if self.max_inodes is not None and self._ispace + n > self.max_inodes * INODE_SPACE:
            raise _err(errno.ENOSPC, "no inodes left")
        self._ispace += n

    def _check_pages(self, n):
        if self.max_bytes is not None and (self._pages + n) * PAGE > self.max_bytes:
            raise _err(errno.ENOSPC, "no space left")

    def _alloc_pages(self, n):
        self._check_pages(n)
        self._pages += n

    def _evict(self, h):
        """Give back what an inode holds once it has no name and is not open."""
        if h.nlink or h.opens or h.freed:
            return
        self._pages -= len(h.pages) + h.long_target()
        self._ispace -= INODE_SPACE + h.xattr_space()
        h.pages, h.xattrs = {}, {}
        h.unwritten.clear()
        h.freed = True

    # -- tree helpers ----------------------------------------------------------------------------
    def _new(self, mode, uid, gid, rdev=0):
        self._reserve_ispace(INODE_SPACE)
        return Inode(next(self._inos), mode, uid, gid, rdev)

    def _child(self, parent, name):
        if not parent.is_dir():
            raise _err(errno.ENOTDIR, "not a directory")
        if len(name) > self.name_max:
            raise _err(errno.ENAMETOOLONG, "name too long")
        e = parent.entries.get(name)
        return e[1] if e else None

    def _existing(self, parent, name):
        node = self._child(parent, name)
        if node is None:
            raise _err(errno.ENOENT, "no such entry")
        return node

    def _insert(self, parent, name, node):
        parent.entries[name] = (parent.seq, node)
        parent.seq += 1
        if node.is_dir():
            node.parent = parent
            parent.nlink += 1

    def _detach(self, parent, name):
        """Take the entry out of parent; the inode's own link count is untouched."""
        _, node = parent.entries.pop(name)
        if node.is_dir():
            parent.nlink -= 1
        return node

    def _drop_link(self, node):
        """One name of node is gone (unlink, rmdir, replaced by rename)."""
        if node.is_dir():
            node.nlink = 0
        else:
            if node.nlink > 1:
                self._ispace -= INODE_SPACE      # tmpfs charges every extra name
            node.nlink -= 1
        self._evict(node)

    def _unlink_entry(self, parent, name):
        node = self._detach(parent, name)
        self._drop_link(node)
        return node

    def _add_link(self, parent, name, node):
        if node.nlink:
            self._reserve_ispace(INODE_SPACE)
        node.nlink += 1
        self._insert(parent, name, node)

    def _set_target(self, node, target):
        if len(target) >= SHORT_SYMLINK:
            self._alloc_pages(1)
        node.target, node.size = bytes(target), len(target)

    def _set_xattr(self, node, name, value):
        old = node.xattrs.get(name)
        self._reserve_ispace(_xattr_space(name, value) - (_xattr_space(name, old) if old is not None else 0))
        node.xattrs[name] = bytes(value)

    def _new_owned(self, ctx, parent, mode, rdev=0):
        """An inode made by the caller in parent: ctx's owner, umask, and the
        setgid directory rules."""
        gid = ctx.gid
        mode = stat.S_IFMT(mode) | (mode & 0o7777 & ~ctx.umask)
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        if mode & SGID_EXEC == SGID_EXEC and not stat.S_ISDIR(mode) and ctx.uid != 0 and gid != ctx.gid:
            mode &= ~stat.S_ISGID       # as the kernel strips it for non-members
        return self._new(mode, ctx.uid, gid, rdev)

    def _create(self, ctx, parent, name, mode, rdev=0):
        """A new inode named name in parent, owned by the caller."""
        if self._child(parent, name) is not None:
            raise _err(errno.EEXIST, "exists")
        node = self._new_owned(ctx, parent, mode, rdev)
        self._insert(parent, name, node)
        parent.touch(node.ctime)
        return node

    @staticmethod
    def _sticky_check(ctx, parent, node):
        if (parent.mode & stat.S_ISVTX and ctx.uid != 0
                and ctx.uid != parent.uid and ctx.uid != node.uid):
            raise _err(errno.EPERM, "sticky directory")

    def _is_ancestor(self, a, d):
        """Is directory a an ancestor of (or the same as) d?"""
        while True:
            if d is a:
                return True
            if d is self._root or d.parent is None or d.parent is d:
                return False
            d = d.parent

    # -- inodes ----------------------------------------------------------------------------------
    def root(self):
        return self._root

    def lookup(self, ctx, parent, name):
        with self._lock:
            node = self._existing(parent, name)
            return node, node.attr()

    def forget(self, handle):
        """Nothing to do: an inode lives while it has a name or is open, and
        a handle the VFS still holds keeps answering getattr after that."""

    def getattr(self, ctx, h, file=None):
        with self._lock:
            return h.attr()

    def setattr(self, ctx, h, file, ch):
        with self._lock:
            self._check_setattr(ctx, h, ch)
            return self._apply_setattr(ctx, h, ch)

    def _check_setattr(self, ctx, h, ch):
        """setattr_prepare(): every refusal before any change."""
        owner = ctx.uid == 0 or ctx.uid == h.uid
        if ch.size is not None:
            if h.is_dir():
                raise _err(errno.EISDIR, "is a directory")
            if not h.is_reg():
                raise _err(errno.EINVAL, "not a regular file")
            if ch.size > MAX_FILE_SIZE:
                raise _err(errno.EFBIG, "file too large")
        # chown_ok()/chgrp_ok(): a non-owner may not even "change" to the same ids
        if ch.uid is not None and ctx.uid != 0 and (ctx.uid != h.uid or ch.uid != h.uid):
            raise _err(errno.EPERM, "only root changes owners")
        if ch.gid is not None and ctx.uid != 0 and (ctx.uid != h.uid or ch.gid not in (ctx.gid, h.gid)):
            raise _err(errno.EPERM, "cannot give the file to that group")
        if ch.mode is not None and not owner:
            raise _err(errno.EPERM, "not the owner")
        explicit = any(v is not None and v is not NOW for v in (ch.atime, ch.mtime))
        if explicit and not owner:
            raise _err(errno.EPERM, "only the owner sets explicit times")
        # utimes(NULL): the owner, or anyone who may write (a truncate's own
        # mtime update comes with the size and needs no more)
        touch = NOW in (ch.atime, ch.mtime) and ch.size is None
        if touch and not owner and not _allowed(ctx, h, os.W_OK):
            raise _err(errno.EACCES, "no write permission")

    def _apply_setattr(self, ctx, h, ch):
        t = _now()
        changed = False
        if ch.size is not None:
            # not growing: pages past the new EOF go (fallocate KEEP_SIZE ones too)
            resized = ch.size != h.size
            if resized or self._pages_past(h, ch.size):      # same size: KEEP_SIZE pages go
                self._truncate(h, ch.size)
            if resized:
                h.mtime = t
                changed = True
        if ch.uid is not None or ch.gid is not None:
            if not h.is_dir():
                _kill_suidgid(h, ctx, t)    # judged on the group the file had
            if ch.uid is not None:
                h.uid = ch.uid
            if ch.gid is not None:
                h.gid = ch.gid
            changed = True
        if ch.mode is not None:
            mode = ch.mode & 0o7777
            if ctx.uid != 0 and ctx.gid != h.gid:
                mode &= ~stat.S_ISGID        # not in the file's group
            h.mode = stat.S_IFMT(h.mode) | mode
            changed = True
        if ch.kill_suidgid:
            _kill_suidgid(h, ctx, t)
        for which in ("atime", "mtime"):
            v = getattr(ch, which)
            if v is not None:
                setattr(h, which, t if v is NOW else v)
                changed = True
        if ch.ctime is not None:
            h.ctime = ch.ctime
        elif changed:
            h.ctime = t
        return h.attr()

    def readlink(self, ctx, h):
        if not stat.S_ISLNK(h.mode):
            raise _err(errno.EINVAL, "not a symlink")
        return h.target

    def access(self, ctx, h, mask):
        if not _allowed(ctx, h, mask):
            raise _err(errno.EACCES, "permission denied")

    # -- namespace -------------------------------------------------------------------------------
    def mknod(self, ctx, parent, name, mode, rdev):
        ftype = stat.S_IFMT(mode)
        is_dev = ftype in (stat.S_IFCHR, stat.S_IFBLK)
        if not is_dev and ftype not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
            raise _err(errno.EINVAL, "bad file type")
        with self._lock:
            if self._child(parent, name) is not None:
                raise _err(errno.EEXIST, "exists")
            if is_dev and not self.allow_devices and not (ftype == stat.S_IFCHR and rdev == 0):
                raise _err(errno.EPERM, "device nodes are not allowed")
            node = self._create(ctx, parent, name, mode, rdev if is_dev else 0)
            return node, node.attr()

    def mkdir(self, ctx, parent, name, mode):
        with self._lock:
            if self._child(parent, name) is not None:
                raise _err(errno.EEXIST, "exists")
            if parent.nlink >= self.link_max:
                raise _err(errno.EMLINK, "too many links")
            # only rwx and sticky: setgid comes from the parent (vfs_mkdir())
            node = self._create(ctx, parent, name, stat.S_IFDIR | (mode & 0o1777))
            return node, node.attr()

    def symlink(self, ctx, parent, name, target):
        with self._lock:
            if self._child(parent, name) is not None:
                raise _err(errno.EEXIST, "exists")
            if len(target) >= SHORT_SYMLINK:
                self._check_pages(1)
            node = self._create(ctx, parent, name, stat.S_IFLNK | 0o777)
            self._set_target(node, target)
            return node, node.attr()

    def link(self, ctx, h, newparent, newname):
        with self._lock:
            if self._child(newparent, newname) is not None:
                raise _err(errno.EEXIST, "exists")
            if h.is_dir():
                raise _err(errno.EPERM, "hard link to a directory")
            if h.nlink == 0 and not (h.tmpfile and not h.freed):
                raise _err(errno.ENOENT, "file was removed")
            if h.nlink >= self.link_max:
                raise _err(errno.EMLINK, "too many links")
            self._add_link(newparent, newname, h)
            h.tmpfile = False
            t = _now()
            h.ctime = t
            newparent.touch(t)
            return h, h.attr()

    def unlink(self, ctx, parent, name):
        with self._lock:
            node = self._existing(parent, name)
            self._sticky_check(ctx, parent, node)
            if node.is_dir():
                raise _err(errno.EISDIR, "is a directory")
            self._unlink_entry(parent, name)
            t = _now()
            node.ctime = t
            parent.touch(t)

    def rmdir(self, ctx, parent, name):
        with self._lock:
            node = self._existing(parent, name)
            self._sticky_check(ctx, parent, node)
            if not node.is_dir():
                raise _err(errno.ENOTDIR, "not a directory")
            if node.entries:
                raise _err(errno.ENOTEMPTY, "directory not empty")
            self._unlink_entry(parent, name)
            t = _now()
            node.ctime = t
            parent.touch(t)

    def rename(self, ctx, parent, name, newparent, newname, flags=0):
        exchange, noreplace, whiteout = (flags & RENAME_EXCHANGE, flags & RENAME_NOREPLACE,
                                         flags & RENAME_WHITEOUT)
        if flags & ~(RENAME_EXCHANGE | RENAME_NOREPLACE | RENAME_WHITEOUT) or exchange and (noreplace or whiteout):
            raise _err(errno.EINVAL, "bad rename flags")
        with self._lock:
            src = self._existing(parent, name)
            dst = self._child(newparent, newname)
            self._check_rename(ctx, parent, src, newparent, dst, flags)
            if dst is src:
                return                       # two names of one inode: nothing happens
            t = _now()
            if exchange:
                self._detach(parent, name)
                self._detach(newparent, newname)
                self._insert(newparent, newname, src)
                self._insert(parent, name, dst)
                dst.ctime = t
            else:
                wh = self._new(stat.S_IFCHR, ctx.uid, ctx.gid, 0) if whiteout else None
                if dst is not None:
                    self._unlink_entry(newparent, newname)
                    dst.ctime = t
                self._detach(parent, name)
                self._insert(newparent, newname, src)
                if wh is not None:
                    self._insert(parent, name, wh)
            src.ctime = t
            parent.touch(t)
            newparent.touch(t)

    def _check_rename(self, ctx, parent, src, newparent, dst, flags):
        """The refusals of renameat2(), in the kernel's order."""
        exchange = flags & RENAME_EXCHANGE
        if flags & RENAME_NOREPLACE and dst is not None:
            raise _err(errno.EEXIST, "target exists")
        if exchange and dst is None:
            raise _err(errno.ENOENT, "nothing to exchange with")
        if parent is not newparent:
            # lock_rename()'s trap: one directory inside the other
            if src.is_dir() and self._is_ancestor(src, newparent):
                raise _err(errno.EINVAL, "directory into its own subtree")
            if dst is not None and dst.is_dir() and self._is_ancestor(dst, parent):
                raise _err(errno.EINVAL if exchange else errno.ENOTEMPTY, "target is an ancestor")
        if dst is src:
            return
        self._sticky_check(ctx, parent, src)
        if dst is not None:
            self._sticky_check(ctx, newparent, dst)
            if not exchange and src.is_dir() and not dst.is_dir():
                raise _err(errno.ENOTDIR, "not a directory")
            if not exchange and not src.is_dir() and dst.is_dir():
                raise _err(errno.EISDIR, "is a directory")
        if parent is not newparent:
            dst_dir = dst is not None and dst.is_dir()
            if src.is_dir() and not dst_dir and newparent.nlink >= self.link_max \
                    or exchange and dst_dir and not src.is_dir() and parent.nlink >= self.link_max:
                raise _err(errno.EMLINK, "too many links")
        if not exchange and dst is not None and dst.is_dir() and dst.entries:
            raise _err(errno.ENOTEMPTY, "directory not empty")

    # -- files -----------------------------------------------------------------------------------
    def _opened(self, h, flags):
        h.opens += 1
        return OpenFile(h, flags)

    def open(self, ctx, h, flags):
        with self._lock:
            if stat.S_ISLNK(h.mode):
                raise _err(errno.ELOOP, "is a symlink")
            if h.is_dir() and (flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
                raise _err(errno.EISDIR, "is a directory")
            # Linux truncates even for O_RDONLY|O_TRUNC (the kernel checked write
            # access), and stamps mtime/ctime even when the file was empty
            if flags & os.O_TRUNC and h.is_reg():
                self._truncate(h, 0)
                h.touch()
            return self._opened(h, flags)

    def create(self, ctx, parent, name, mode, flags):
        with self._lock:
            node = self._child(parent, name)
            if node is not None:
                if flags & os.O_EXCL:
                    raise _err(errno.EEXIST, "exists")
                return node, node.attr(), self.open(ctx, node, flags), False
            node = self._create(ctx, parent, name, stat.S_IFREG | (mode & 0o7777))
            return node, node.attr(), self._opened(node, flags), True

    def tmpfile(self, ctx, parent, mode, flags):
        with self._lock:
            if not parent.is_dir():
                raise _err(errno.ENOTDIR, "not a directory")
            node = self._new_owned(ctx, parent, stat.S_IFREG | (mode & 0o7777))
            node.nlink, node.tmpfile = 0, True
            return node, node.attr(), self._opened(node, flags)

    def release(self, ctx, f):
        with self._lock:
            if not f.released:
                f.released = True
                f.inode.opens -= 1
                self._evict(f.inode)

    def read(self, ctx, f, offset, views):
        with self._lock:
            h = f.inode
            if h.is_dir():
                raise _err(errno.EISDIR, "is a directory")
            if offset < 0:
                raise _err(errno.EINVAL, "negative offset")
            pos = offset
            for v in views:
                if pos >= h.size:
                    break
                n = min(len(v), h.size - pos)
                self._copy_out(h, pos, v[:n])
                pos += n
            return pos - offset

    @staticmethod
    def _copy_out(h, pos, view):
        done = 0
        while done < len(view):
            idx, off = divmod(pos + done, PAGE)
            n = min(PAGE - off, len(view) - done)
            page = h.pages.get(idx)
            if page is None:
                view[done:done + n] = bytes(n)
            else:
                view[done:done + n] = page[off:off + n]
            done += n

    def write(self, ctx, f, offset, views, kill_suidgid=False):
        with self._lock:
            h = f.inode
            if h.is_dir():
                raise _err(errno.EISDIR, "is a directory")
            if f.flags & os.O_APPEND:
                offset = h.size
            n = self._write_at(h, offset, views)
            if n:
                t = _now()
                h.touch(t)
                if kill_suidgid:
                    _kill_suidgid(h, ctx, t)
            return n

    def _write_at(self, h, offset, views):
        """Copy views in at offset -> bytes written. Short when space runs out
        (ENOSPC only if nothing fit) or at the maximum file size (EFBIG only
        at it), as generic_write_checks() and tmpfs do."""
        total = sum(len(v) for v in views)
        if offset < 0:
            raise _err(errno.EINVAL, "negative offset")
        if total and offset >= MAX_FILE_SIZE:
            raise _err(errno.EFBIG, "file too large")
        total = min(total, MAX_FILE_SIZE - offset)
        pos = offset
        try:
            for v in views:
                v = v[:offset + total - pos]
                done = 0
                while done < len(v):
                    idx, off = divmod(pos, PAGE)
                    n = min(PAGE - off, len(v) - done)
                    self._page(h, idx)[off:off + n] = v[done:done + n]
                    h.unwritten.discard(idx)
                    done += n
                    pos += n
        except OSError:
            if pos == offset:
                raise
        h.size = max(h.size, pos)
        return pos - offset

    def _page(self, h, idx):
        page = h.pages.get(idx)
        if page is None:
            self._alloc_pages(1)
            page = h.pages[idx] = bytearray(PAGE)
        return page

    def _drop_pages(self, h, first, last):
        """Free whole pages first..last-1."""
        for idx in [i for i in h.pages if first <= i < last]:
            del h.pages[idx]
            h.unwritten.discard(idx)
            self._pages -= 1

    def _zero(self, h, start, end):
        """Zero bytes [start, end): whole pages are freed, partial ones cleared."""
        if start >= end:
            return
        self._drop_pages(h, -(-start // PAGE), end // PAGE)
        for idx in {start // PAGE, (end - 1) // PAGE}:
            page = h.pages.get(idx)
            if page is not None:
                lo, hi = max(start, idx * PAGE), min(end, (idx + 1) * PAGE)
                if lo < hi:
                    page[lo - idx * PAGE:hi - idx * PAGE] = bytes(hi - lo)

    @staticmethod
    def _pages_past(h, size):
        first = -(-size // PAGE)
        return any(i >= first for i in h.pages)

    def _truncate(self, h, size):
        if size <= h.size:
            self._zero(h, size, h.size)
            # pages past EOF go, fallocate KEEP_SIZE ones too (growing keeps them)
            self._drop_pages(h, -(-size // PAGE), 1 << 62)
        h.size = size

    def fsync(self, ctx, f, datasync):
        pass

    def fallocate(self, ctx, f, mode, offset, length):
        if offset < 0 or length <= 0:
            raise _err(errno.EINVAL, "bad range")
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) \
                or mode & FALLOC_FL_PUNCH_HOLE and mode & FALLOC_FL_ZERO_RANGE \
                or mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
            raise _err(errno.EOPNOTSUPP, "unsupported fallocate mode")
        if offset + length > MAX_FILE_SIZE:
            raise _err(errno.EFBIG, "file too large")
        with self._lock:
            h = f.inode
            if h.is_dir():
                raise _err(errno.EISDIR, "is a directory")
            end = offset + length
            if mode & FALLOC_FL_PUNCH_HOLE:
                self._zero(h, offset, min(end, h.size))
            else:
                self._allocate(h, offset, end, mode)
            t = _now()
            h.touch(t)
            if ctx is not None and ctx.uid != 0:
                _kill_suidgid(h, ctx, t)       # file_modified(), as tmpfs does

    def _allocate(self, h, offset, end, mode):
        first, last = offset // PAGE, -(-end // PAGE)
        # tmpfs asks for room for the whole range, allocated pages included
        self._check_pages(last - first)
        if mode & FALLOC_FL_ZERO_RANGE:
            self._zero(h, offset, min(end, h.size))
        for idx in range(first, last):
            if idx not in h.pages:
                self._page(h, idx)
                h.unwritten.add(idx)
        if not mode & FALLOC_FL_KEEP_SIZE:
            h.size = max(h.size, end)

    def lseek(self, ctx, f, offset, whence):
        with self._lock:
            h = f.inode
            if whence in (os.SEEK_DATA, os.SEEK_HOLE):
                return self._seek_data_hole(h, offset, whence)
            if whence == os.SEEK_SET:
                pos = offset
            elif whence == os.SEEK_END:
                pos = h.size + offset
            else:
                raise _err(errno.EINVAL, "bad whence")
            if pos < 0:
                raise _err(errno.EINVAL, "negative offset")
            return pos

    @staticmethod
    def _seek_data_hole(h, offset, whence):
        if offset < 0 or offset >= h.size:
            raise _err(errno.ENXIO, "beyond end of file")
        first, last = offset // PAGE, (h.size - 1) // PAGE
        data = sorted(i for i in h.pages if first <= i <= last and i not in h.unwritten)
        if whence == os.SEEK_DATA:
            if not data:
                raise _err(errno.ENXIO, "no more data")
            return max(offset, data[0] * PAGE)
        idx = first                 # SEEK_HOLE: the end of the data run at first
        for i in data:
            if i != idx:
                break
            idx += 1
        return min(max(offset, idx * PAGE), h.size)

    def copy_file_range(self, ctx, fin, off_in, fout, off_out, length, flags):
        if flags:
            raise _err(errno.EINVAL, "flags must be 0")
        with self._lock:
            n = max(0, min(length, fin.inode.size - off_in))
            buf = bytearray(n)
            self._copy_out(fin.inode, off_in, memoryview(buf))
            return self.write(ctx, OpenFile(fout.inode, 0), off_out, [memoryview(buf)])

    # -- directories -----------------------------------------------------------------------------
    def opendir(self, ctx, h, flags):
        with self._lock:
            if not h.is_dir():
                raise _err(errno.ENOTDIR, "not a directory")
            return self._opened(h, flags)

    def releasedir(self, ctx, d):
        self.release(ctx, d)

    def readdir(self, ctx, d, offset):
        """Cookies are per-directory insertion numbers: an entry keeps its
        cookie while it exists, removed ones vanish, new ones come later."""
        h = d.inode if isinstance(d, OpenFile) else d
        with self._lock:
            out = []
            if offset < 1:
                out.append(DirEntry(b".", h.ino, 4, 1))
            if offset < 2:
                out.append(DirEntry(b"..", h.parent.ino if h.parent else h.ino, 4, 2))
            for name, (cookie, node) in h.entries.items():
                if cookie > offset:
                    out.append(DirEntry(name, node.ino, stat.S_IFMT(node.mode) >> 12, cookie))
        return iter(out)

    # -- xattrs ----------------------------------------------------------------------------------
    def _xattr_check(self, ctx, h, name, write):
        """Namespace rules (fs/xattr.c and the commoncap LSM, which also apply
        in a guest; kept here for callers without them)."""
        if name.startswith(b"trusted."):
            if ctx.uid != 0:
                raise _err(errno.EPERM if write else errno.ENODATA, "trusted xattrs need root")
        elif name.startswith(b"security."):
            if write and ctx.uid != 0:
                raise _err(errno.EPERM, "security xattrs need root")
        elif name.startswith(b"user."):
            if not (h.is_reg() or h.is_dir()):
                raise _err(errno.EPERM if write else errno.ENODATA, "user xattrs only on files and directories")
            if write and h.is_dir() and h.mode & stat.S_ISVTX and ctx.uid not in (0, h.uid):
                raise _err(errno.EPERM, "sticky directory")
        elif name not in ACL_XATTRS:
            raise _err(errno.EOPNOTSUPP, "unsupported xattr namespace")

    def setxattr(self, ctx, h, name, value, flags):
        if len(value) > self.xattr_size_max:
            raise _err(errno.E2BIG, "value too large")
        with self._lock:
            self._xattr_check(ctx, h, name, True)
            if name in ACL_XATTRS:
                _check_acl(value)
            old = h.xattrs.get(name)
            if flags & os.XATTR_CREATE and old is not None:
                raise _err(errno.EEXIST, "xattr exists")
            if flags & os.XATTR_REPLACE and old is None:
                raise _err(errno.ENODATA, "no such xattr")
            self._set_xattr(h, name, value)
            h.ctime = _now()

    def getxattr(self, ctx, h, name):
        with self._lock:
            self._xattr_check(ctx, h, name, False)
            try:
                return h.xattrs[name]
            except KeyError:
                raise _err(errno.ENODATA, "no such xattr") from None

    def listxattr(self, ctx, h):
        with self._lock:
            return [n for n in h.xattrs if ctx.uid == 0 or not n.startswith(b"trusted.")]

    def removexattr(self, ctx, h, name):
        with self._lock:
            self._xattr_check(ctx, h, name, True)
            old = h.xattrs.pop(name, None)
            if old is None:
                raise _err(errno.ENODATA, "no such xattr")
            self._ispace -= _xattr_space(name, old)
            h.ctime = _now()

    # -- filesystem ------------------------------------------------------------------------------
    def statfs(self, ctx, h):
        with self._lock:
            blocks = self.max_bytes // PAGE if self.max_bytes else UNLIMITED_BLOCKS
            files = self.max_inodes or UNLIMITED_INODES
            bfree = max(0, blocks - self._pages)
            ffree = max(0, (files * INODE_SPACE - self._ispace) // INODE_SPACE)
            return StatFs(blocks, bfree, bfree, files, ffree, PAGE, self.name_max, PAGE)

    def destroy(self):
        """Unmounted for good: drop the tree."""
        with self._lock:
            self._root.entries.clear()
            self._root.nlink = 2
            self._pages = 0
            self._ispace = INODE_SPACE + self._root.xattr_space()
