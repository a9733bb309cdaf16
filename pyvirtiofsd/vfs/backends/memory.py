"""A tmpfs-like tree in RAM, with Linux semantics implemented here.

The host kernel's tmpfs is the oracle for its behaviour (tests compare the
two). Path permission checks (search/write on directories, read/write on
open) are the kernel's job under default_permissions, which both virtio-fs
guests and our /dev/fuse mounts use; what a filesystem itself decides is
done here: ownership and mode changes, times, sticky directories, killing
setuid/setgid, link counts, limits.

File data lives in 4 KiB pages kept in a dict, so files are sparse at the
same granularity as tmpfs (SEEK_DATA/SEEK_HOLE and st_blocks agree).
"""
import errno
import itertools
import os
import stat
import threading
import time

from ..backend import (NOW, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, Attr, Backend,
                       Capabilities, Consistency, DirEntry, StatFs)

PAGE = 4096
MAX_FILE_SIZE = (1 << 63) - 1
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.", b"system.posix_acl_access",
                  b"system.posix_acl_default")
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def _now():
    return time.time_ns()


class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "rdev", "atime", "mtime", "ctime",
                 "xattrs", "pages", "unwritten", "size", "target", "entries", "seq", "parent",
                 "tmpfile")

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

    @property
    def key(self):
        return self.ino

    def is_dir(self):
        return stat.S_ISDIR(self.mode)

    def attr(self):
        blocks = len(self.pages) * (PAGE // 512)
        # tmpfs counts 20 bogus bytes per directory entry, '.' and '..' included
        size = 40 + 20 * len(self.entries) if self.entries is not None else self.size
        return Attr(self.ino, size, blocks, self.atime, self.mtime, self.ctime, self.mode,
                    self.nlink, self.uid, self.gid, self.rdev, PAGE)

    def touch(self, t=None, m=True, c=True):
        t = t or _now()
        if m:
            self.mtime = t
        if c:
            self.ctime = t


class OpenFile:
    __slots__ = ("inode", "flags")

    def __init__(self, inode, flags):
        self.inode, self.flags = inode, flags


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
        self._inodes = 0
        self._pages = 0
        self._root = self._new(stat.S_IFDIR | 0o755, 0, 0)
        self._root.parent = self._root
        if prefill is not None:
            self._prefill(prefill)

    def _prefill(self, src):
        if os.path.isfile(src):
            self._prefill_tar(src)
        else:
            self._prefill_dir(src)

    def _prefill_tar(self, path):
        """Unpack a tarball in: data, modes, owners, mtimes, symlinks, hard
        links, pax xattrs (device nodes only if allowed)."""
        import tarfile
        with self._lock, tarfile.open(path) as tar:
            for m in tar:
                parts = [os.fsencode(p) for p in m.name.strip("/").split("/") if p not in ("", ".")]
                if not parts or b".." in parts:
                    continue
                parent = self._root
                for p in parts[:-1]:
                    child = self._child(parent, p)
                    if child is None:
                        child = self._new(stat.S_IFDIR | 0o755, 0, 0)
                        self._insert(parent, p, child)
                    parent = child
                name, old = parts[-1], self._child(parent, parts[-1])
                if old is not None and not (m.isdir() and old.is_dir()):
                    self._remove(parent, name)
                    old = None
                if m.islnk():
                    target = self._tar_lookup(m.linkname)
                    if target is not None and not target.is_dir():
                        target.nlink += 1
                        self._insert(parent, name, target)
                    continue
                if m.isdev() and not self.allow_devices and (m.devmajor or m.devminor):
                    continue
                ftype = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
                         tarfile.FIFOTYPE: stat.S_IFIFO, tarfile.CHRTYPE: stat.S_IFCHR,
                         tarfile.BLKTYPE: stat.S_IFBLK}.get(m.type, stat.S_IFREG)
                node = old or self._new(ftype | (m.mode & 0o7777), m.uid, m.gid,
                                        os.makedev(m.devmajor, m.devminor) if m.isdev() else 0)
                node.mode, node.uid, node.gid = ftype | (m.mode & 0o7777), m.uid, m.gid
                if old is None:
                    self._insert(parent, name, node)
                if m.issym():
                    node.target = os.fsencode(m.linkname)
                    node.size = len(node.target)
                elif m.isfile():
                    self.write(None, OpenFile(node, 0), 0, [memoryview(tar.extractfile(m).read())])
                for key, value in m.pax_headers.items():
                    if key.startswith("SCHILY.xattr."):
                        node.xattrs[os.fsencode(key[len("SCHILY.xattr."):])] = os.fsencode(value)
                node.atime = node.mtime = node.ctime = int(m.mtime * 1_000_000_000)

    def _tar_lookup(self, path):
        node = self._root
        for p in path.strip("/").split("/"):
            if p in ("", "."):
                continue
            node = self._child(node, os.fsencode(p)) if node.is_dir() else None
            if node is None:
                return None
        return node

    def _prefill_dir(self, src):
        """Copy a host directory tree in: data, modes, owners, times,
        symlinks, hard links and xattrs (device nodes only if allowed)."""
        seen = {}                                # (dev, ino) -> Inode, for hard links

        def copy(dirpath, into):
            for entry in os.scandir(dirpath):
                st = entry.stat(follow_symlinks=False)
                name = os.fsencode(entry.name)
                known = seen.get((st.st_dev, st.st_ino))
                if known is not None:
                    known.nlink += 1
                    self._insert(into, name, known)
                    continue
                node = self._new(st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
                seen[(st.st_dev, st.st_ino)] = node
                self._insert(into, name, node)
                if entry.is_symlink():
                    node.target = os.fsencode(os.readlink(entry.path))
                    node.size = len(node.target)
                elif entry.is_dir(follow_symlinks=False):
                    copy(entry.path, node)
                elif stat.S_ISREG(st.st_mode):
                    with open(entry.path, "rb") as f:
                        data = f.read()
                    self.write(None, OpenFile(node, 0), 0, [memoryview(data)])
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    if not self.allow_devices and st.st_rdev != 0:
                        self._remove(into, name)
                        continue
                for xname in os.listxattr(entry.path, follow_symlinks=False):
                    node.xattrs[os.fsencode(xname)] = os.getxattr(entry.path, xname, follow_symlinks=False)
                node.atime, node.mtime, node.ctime = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        with self._lock:
            copy(src, self._root)
            st = os.stat(src)
            self._root.mode, self._root.uid, self._root.gid = st.st_mode, st.st_uid, st.st_gid

    # -- helpers ------------------------------------------------------------------------------
    def _new(self, mode, uid, gid, rdev=0):
        if self.max_inodes is not None and self._inodes >= self.max_inodes:
            raise OSError(errno.ENOSPC, "no inodes left")
        self._inodes += 1
        return Inode(next(self._inos), mode, uid, gid, rdev)

    def _child(self, parent, name):
        if not parent.is_dir():
            raise OSError(errno.ENOTDIR, "not a directory")
        if len(name) > self.name_max:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        e = parent.entries.get(name)
        return e[1] if e else None

    def _existing(self, parent, name):
        node = self._child(parent, name)
        if node is None:
            raise OSError(errno.ENOENT, "no such entry")
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

    def _remove(self, parent, name):
        node = self._detach(parent, name)
        node.nlink = 0 if node.is_dir() else node.nlink - 1
        if node.nlink == 0:
            self._inodes -= 1
        return node

    def _create(self, ctx, parent, name, mode, rdev=0):
        """A new inode named name in parent, owned by the caller."""
        if self._child(parent, name) is not None:
            raise OSError(errno.EEXIST, "exists")
        node = self._make(ctx, parent, mode, rdev)
        self._insert(parent, name, node)
        parent.touch(node.ctime)
        return node

    def _make(self, ctx, parent, mode, rdev=0):
        """A new inode for parent, owned by the caller (not linked yet)."""
        gid = ctx.gid
        mode = (mode & ~0o7777) | (mode & 0o7777 & ~ctx.umask)
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        sgid_exec = stat.S_ISGID | stat.S_IXGRP
        if mode & sgid_exec == sgid_exec and not stat.S_ISDIR(mode) and ctx.uid != 0 and gid != ctx.gid:
            mode &= ~stat.S_ISGID       # as the kernel strips it for non-members
        return self._new(mode, ctx.uid, gid, rdev)

    def _sticky_check(self, ctx, parent, node):
        if (parent.mode & stat.S_ISVTX and ctx.uid != 0
                and ctx.uid != parent.uid and ctx.uid != node.uid):
            raise OSError(errno.EPERM, "sticky directory")

    # -- inodes ---------------------------------------------------------------------------------
    def root(self):
        return self._root

    def lookup(self, ctx, parent, name):
        with self._lock:
            node = self._existing(parent, name)
            return node, node.attr()

    def getattr(self, ctx, h, file=None):
        with self._lock:
            return h.attr()

    def setattr(self, ctx, h, file, ch):
        with self._lock:
            t = _now()
            owner = ctx.uid == 0 or ctx.uid == h.uid
            if ch.uid is not None or ch.gid is not None:
                self._chown(ctx, h, ch.uid, ch.gid)
            if ch.mode is not None:
                if not owner:
                    raise OSError(errno.EPERM, "not the owner")
                mode = ch.mode & 0o7777
                if ctx.uid != 0 and ctx.gid != h.gid:
                    mode &= ~stat.S_ISGID
                h.mode = stat.S_IFMT(h.mode) | mode
            if ch.size is not None:
                if h.is_dir():
                    raise OSError(errno.EISDIR, "is a directory")
                if not stat.S_ISREG(h.mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                self._truncate(h, ch.size)
                h.touch(t)
            if ch.kill_suidgid:
                _kill_suidgid(h)
            for which in ("atime", "mtime"):
                v = getattr(ch, which)
                if v is None:
                    continue
                if v is NOW:
                    v = t
                elif not owner:
                    raise OSError(errno.EPERM, "only the owner sets explicit times")
                setattr(h, which, v)
            h.ctime = t
            return h.attr()

    def _chown(self, ctx, h, uid, gid):
        if uid is not None and uid != h.uid and ctx.uid != 0:
            raise OSError(errno.EPERM, "only root changes owners")
        if gid is not None and gid != h.gid and ctx.uid != 0 and (ctx.uid != h.uid or gid != ctx.gid):
            raise OSError(errno.EPERM, "cannot give the file to that group")
        if uid is not None:
            h.uid = uid
        if gid is not None:
            h.gid = gid
        if not h.is_dir():
            _kill_suidgid(h)

    def readlink(self, ctx, h):
        if not stat.S_ISLNK(h.mode):
            raise OSError(errno.EINVAL, "not a symlink")
        return h.target

    def access(self, ctx, h, mask):
        mask &= os.R_OK | os.W_OK | os.X_OK
        if ctx.uid == 0:
            if mask & os.X_OK and not (h.is_dir() or h.mode & 0o111):
                raise OSError(errno.EACCES, "no execute bit")
            return
        bits = h.mode >> 6 if ctx.uid == h.uid else h.mode >> 3 if ctx.gid == h.gid else h.mode
        if mask & ~bits & 0o7:
            raise OSError(errno.EACCES, "permission denied")

    # -- namespace -------------------------------------------------------------------------------
    def mknod(self, ctx, parent, name, mode, rdev):
        ftype = stat.S_IFMT(mode)
        if ftype in (stat.S_IFCHR, stat.S_IFBLK):
            if not self.allow_devices and not (ftype == stat.S_IFCHR and rdev == 0):
                raise OSError(errno.EPERM, "device nodes are not allowed")
        elif ftype not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
            raise OSError(errno.EINVAL, "bad file type")
        with self._lock:
            node = self._create(ctx, parent, name, mode, rdev if ftype in (stat.S_IFCHR, stat.S_IFBLK) else 0)
            return node, node.attr()

    def mkdir(self, ctx, parent, name, mode):
        with self._lock:
            if parent.nlink >= self.link_max:
                raise OSError(errno.EMLINK, "too many links")
            node = self._create(ctx, parent, name, stat.S_IFDIR | (mode & 0o7777))
            return node, node.attr()

    def symlink(self, ctx, parent, name, target):
        with self._lock:
            node = self._create(ctx, parent, name, stat.S_IFLNK | 0o777)
            node.target = bytes(target)
            node.size = len(target)
            return node, node.attr()

    def link(self, ctx, h, newparent, newname):
        with self._lock:
            if h.is_dir():
                raise OSError(errno.EPERM, "hard link to a directory")
            if self._child(newparent, newname) is not None:
                raise OSError(errno.EEXIST, "exists")
            if h.nlink == 0 and not h.tmpfile:
                raise OSError(errno.ENOENT, "file was removed")
            if h.nlink >= self.link_max:
                raise OSError(errno.EMLINK, "too many links")
            if h.nlink == 0:
                self._inodes += 1
            h.nlink += 1
            self._insert(newparent, newname, h)
            t = _now()
            h.ctime = t
            newparent.touch(t)
            return h, h.attr()

    def unlink(self, ctx, parent, name):
        with self._lock:
            node = self._existing(parent, name)
            if node.is_dir():
                raise OSError(errno.EISDIR, "is a directory")
            self._sticky_check(ctx, parent, node)
            self._remove(parent, name)
            t = _now()
            node.ctime = t
            parent.touch(t)

    def rmdir(self, ctx, parent, name):
        with self._lock:
            node = self._existing(parent, name)
            if not node.is_dir():
                raise OSError(errno.ENOTDIR, "not a directory")
            if node.entries:
                raise OSError(errno.ENOTEMPTY, "directory not empty")
            self._sticky_check(ctx, parent, node)
            self._remove(parent, name)
            parent.touch()

    def rename(self, ctx, parent, name, newparent, newname, flags=0):
        exchange, noreplace, whiteout = (flags & RENAME_EXCHANGE, flags & RENAME_NOREPLACE,
                                         flags & RENAME_WHITEOUT)
        if exchange and (noreplace or whiteout):
            raise OSError(errno.EINVAL, "incompatible rename flags")
        with self._lock:
            src = self._existing(parent, name)
            dst = self._child(newparent, newname)
            if dst is src:
                return
            if exchange and dst is None:
                raise OSError(errno.ENOENT, "nothing to exchange with")
            if noreplace and dst is not None:
                raise OSError(errno.EEXIST, "target exists")
            if src.is_dir() and self._is_ancestor(src, newparent):
                raise OSError(errno.EINVAL, "directory into its own subtree")
            if exchange and dst.is_dir() and self._is_ancestor(dst, parent):
                raise OSError(errno.EINVAL, "directory into its own subtree")
            if dst is not None and not exchange:
                if src.is_dir() and not dst.is_dir():
                    raise OSError(errno.ENOTDIR, "not a directory")
                if not src.is_dir() and dst.is_dir():
                    raise OSError(errno.EISDIR, "is a directory")
                if dst.is_dir() and dst.entries:
                    raise OSError(errno.ENOTEMPTY, "directory not empty")
            if src.is_dir() and parent is not newparent and (dst is None or not dst.is_dir()) \
                    and newparent.nlink >= self.link_max:
                raise OSError(errno.EMLINK, "too many links")
            self._sticky_check(ctx, parent, src)
            if dst is not None:
                self._sticky_check(ctx, newparent, dst)
            t = _now()
            if exchange:
                self._detach(parent, name)
                self._detach(newparent, newname)
                self._insert(newparent, newname, src)
                self._insert(parent, name, dst)
                dst.ctime = t
            else:
                if dst is not None:
                    self._remove(newparent, newname)
                    dst.ctime = t
                self._detach(parent, name)
                self._insert(newparent, newname, src)
                if whiteout:
                    wh = self._new(stat.S_IFCHR, ctx.uid, ctx.gid, 0)
                    self._insert(parent, name, wh)
            src.ctime = t
            parent.touch(t)
            newparent.touch(t)

    def _is_ancestor(self, a, d):
        """Is directory a an ancestor of (or the same as) d?"""
        while True:
            if d is a:
                return True
            if d is self._root or d.parent is None:
                return False
            d = d.parent

    # -- files -----------------------------------------------------------------------------------
    def open(self, ctx, h, flags):
        with self._lock:
            if stat.S_ISLNK(h.mode):
                raise OSError(errno.ELOOP, "is a symlink")
            if h.is_dir() and flags & os.O_ACCMODE != os.O_RDONLY:
                raise OSError(errno.EISDIR, "is a directory")
            # Linux truncates even for O_RDONLY|O_TRUNC (the kernel checked write access)
            if flags & os.O_TRUNC and stat.S_ISREG(h.mode):
                if h.size:
                    self._truncate(h, 0)
                    h.touch()
            return OpenFile(h, flags)

    def create(self, ctx, parent, name, mode, flags):
        with self._lock:
            node = self._child(parent, name)
            if node is not None:
                if flags & os.O_EXCL:
                    raise OSError(errno.EEXIST, "exists")
                return node, node.attr(), self.open(ctx, node, flags)
            node = self._create(ctx, parent, name, stat.S_IFREG | (mode & 0o7777))
            return node, node.attr(), OpenFile(node, flags)

    def tmpfile(self, ctx, parent, mode, flags):
        with self._lock:
            if not parent.is_dir():
                raise OSError(errno.ENOTDIR, "not a directory")
            # no entry is added, so the directory's times stay as they are
            node = self._make(ctx, parent, stat.S_IFREG | (mode & 0o7777))
            node.nlink = 0
            self._inodes -= 1            # counted again once linked
            node.tmpfile = True
            return node, node.attr(), OpenFile(node, flags)

    def read(self, ctx, f, offset, views):
        with self._lock:
            h = f.inode
            if h.is_dir():
                raise OSError(errno.EISDIR, "is a directory")
            pos = offset
            for v in views:
                if pos >= h.size:
                    break
                n = min(len(v), h.size - pos)
                self._copy_out(h, pos, v[:n])
                pos += n
            return pos - offset

    def _copy_out(self, h, pos, view):
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
            if f.flags & os.O_APPEND:
                offset = h.size
            total = sum(len(v) for v in views)
            if offset + total > MAX_FILE_SIZE:
                raise OSError(errno.EFBIG, "file too large")
            pos = offset
            for v in views:
                done = 0
                while done < len(v):
                    idx, off = divmod(pos, PAGE)
                    n = min(PAGE - off, len(v) - done)
                    self._page(h, idx)[off:off + n] = v[done:done + n]
                    h.unwritten.discard(idx)
                    done += n
                    pos += n
            h.size = max(h.size, pos)
            if total:
                h.touch()
            if kill_suidgid:
                _kill_suidgid(h)
            return total

    def _page(self, h, idx):
        page = h.pages.get(idx)
        if page is None:
            if self.max_bytes is not None and (self._pages + 1) * PAGE > self.max_bytes:
                raise OSError(errno.ENOSPC, "no space left")
            page = h.pages[idx] = bytearray(PAGE)
            self._pages += 1
        return page

    def _drop_pages(self, h, first, last):
        """Free whole pages first..last-1."""
        for idx in [i for i in h.pages if first <= i < last]:
            del h.pages[idx]
            h.unwritten.discard(idx)
            self._pages -= 1

    def _zero(self, h, start, end):
        """Zero bytes [start, end): whole pages are freed, partial ones cleared."""
        first_full, last_full = -(-start // PAGE), end // PAGE
        self._drop_pages(h, first_full, last_full)
        for idx in {start // PAGE, (end - 1) // PAGE}:
            page = h.pages.get(idx)
            if page is not None:
                lo, hi = max(start, idx * PAGE), min(end, (idx + 1) * PAGE)
                if lo < hi:
                    page[lo - idx * PAGE:hi - idx * PAGE] = bytes(hi - lo)

    def _truncate(self, h, size):
        if size > MAX_FILE_SIZE:
            raise OSError(errno.EFBIG, "file too large")
        if size < h.size:
            self._zero(h, size, h.size)
            self._drop_pages(h, -(-size // PAGE), 1 << 62)
        h.size = size

    def fsync(self, ctx, f, datasync):
        pass

    def release(self, ctx, f):
        pass

    def fallocate(self, ctx, f, mode, offset, length):
        if offset < 0 or length <= 0:
            raise OSError(errno.EINVAL, "bad range")
        with self._lock:
            h = f.inode
            end = offset + length
            if mode & FALLOC_FL_PUNCH_HOLE:
                if not mode & FALLOC_FL_KEEP_SIZE or mode & ~(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE):
                    raise OSError(errno.EOPNOTSUPP, "punch hole needs KEEP_SIZE")
                self._zero(h, offset, min(end, h.size))
            elif mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE):
                raise OSError(errno.EOPNOTSUPP, "unsupported fallocate mode")
            else:
                if end > MAX_FILE_SIZE:
                    raise OSError(errno.EFBIG, "file too large")
                if mode & FALLOC_FL_ZERO_RANGE:
                    self._zero(h, offset, min(end, h.size))
                for idx in range(offset // PAGE, -(-end // PAGE)):
                    if idx not in h.pages:
                        self._page(h, idx)
                        h.unwritten.add(idx)
                if not mode & FALLOC_FL_KEEP_SIZE:
                    h.size = max(h.size, end)
            h.touch()

    def lseek(self, ctx, f, offset, whence):
        with self._lock:
            h = f.inode
            if whence in (os.SEEK_DATA, os.SEEK_HOLE):
                if offset < 0 or offset >= h.size:
                    raise OSError(errno.ENXIO, "beyond end of file")
                first, last = offset // PAGE, (h.size - 1) // PAGE
                data = sorted(i for i in h.pages if first <= i <= last and i not in h.unwritten)
                if whence == os.SEEK_DATA:
                    if not data:
                        raise OSError(errno.ENXIO, "no more data")
                    return max(offset, data[0] * PAGE)
                idx = first                 # SEEK_HOLE: the end of the data run at first
                for i in data:
                    if i != idx:
                        break
                    idx += 1
                return min(max(offset, idx * PAGE), h.size)
            if whence == os.SEEK_SET:
                pos = offset
            elif whence == os.SEEK_END:
                pos = h.size + offset
            else:
                raise OSError(errno.EINVAL, "bad whence")
            if pos < 0:
                raise OSError(errno.EINVAL, "negative offset")
            return pos

    def copy_file_range(self, ctx, fin, off_in, fout, off_out, length, flags):
        if flags:
            raise OSError(errno.EINVAL, "flags must be 0")
        with self._lock:
            n = max(0, min(length, fin.inode.size - off_in))
            buf = bytearray(n)
            self._copy_out(fin.inode, off_in, memoryview(buf))
            return self.write(ctx, OpenFile(fout.inode, 0), off_out, [memoryview(buf)])

    # -- directories -----------------------------------------------------------------------------
    def opendir(self, ctx, h, flags):
        if not h.is_dir():
            raise OSError(errno.ENOTDIR, "not a directory")
        return h

    def readdir(self, ctx, d, offset):
        with self._lock:
            out = []
            if offset < 1:
                out.append(DirEntry(b".", d.ino, 4, 1))
            if offset < 2:
                out.append(DirEntry(b"..", d.parent.ino, 4, 2))
            for name, (cookie, node) in d.entries.items():
                if cookie > offset:
                    out.append(DirEntry(name, node.ino, stat.S_IFMT(node.mode) >> 12, cookie))
        return iter(out)

    # -- xattrs ------------------------------------------------------------------------------------
    def _xattr_ok(self, h, name):
        if not name.startswith(XATTR_PREFIXES):
            raise OSError(errno.EOPNOTSUPP, "unsupported xattr namespace")
        if name.startswith(b"user.") and not (stat.S_ISREG(h.mode) or h.is_dir()):
            raise OSError(errno.EPERM, "user xattrs only on files and directories")

    def setxattr(self, ctx, h, name, value, flags):
        with self._lock:
            self._xattr_ok(h, name)
            if len(value) > self.xattr_size_max:
                raise OSError(errno.E2BIG, "value too large")
            if flags & os.XATTR_CREATE and name in h.xattrs:
                raise OSError(errno.EEXIST, "xattr exists")
            if flags & os.XATTR_REPLACE and name not in h.xattrs:
                raise OSError(errno.ENODATA, "no such xattr")
            if name.startswith(b"trusted.") and ctx.uid != 0:
                raise OSError(errno.EPERM, "trusted xattrs need root")
            h.xattrs[name] = bytes(value)
            h.ctime = _now()

    def getxattr(self, ctx, h, name):
        with self._lock:
            if not name.startswith(XATTR_PREFIXES):
                raise OSError(errno.EOPNOTSUPP, "unsupported xattr namespace")
            if name.startswith(b"trusted.") and ctx.uid != 0:
                raise OSError(errno.ENODATA, "no such xattr")
            try:
                return h.xattrs[name]
            except KeyError:
                raise OSError(errno.ENODATA, "no such xattr") from None

    def listxattr(self, ctx, h):
        with self._lock:
            return [n for n in h.xattrs if ctx.uid == 0 or not n.startswith(b"trusted.")]

    def removexattr(self, ctx, h, name):
        with self._lock:
            self._xattr_ok(h, name)
            if name not in h.xattrs:
                raise OSError(errno.ENODATA, "no such xattr")
            del h.xattrs[name]
            h.ctime = _now()

    # -- filesystem ---------------------------------------------------------------------------------
    def statfs(self, ctx, h):
        blocks = (self.max_bytes // PAGE) if self.max_bytes else (1 << 40) // PAGE
        files = self.max_inodes or (1 << 32)
        free = max(0, blocks - self._pages)
        return StatFs(blocks, free, free, files, max(0, files - self._inodes), PAGE, self.name_max, PAGE)


def _kill_suidgid(h):
    kill = stat.S_ISUID | (stat.S_ISGID if h.mode & stat.S_IXGRP else 0)
    if stat.S_ISREG(h.mode) and h.mode & kill:
        h.mode &= ~kill
        h.ctime = _now()
