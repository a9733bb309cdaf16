"""The Backend interface: one mounted filesystem instance (a superblock).

Operations work on inode handles, never on path strings. A handle is an
object the backend makes; it must have a hashable ``key`` that names the
underlying inode (the VFS keeps one node per key, so a hard link looked up
twice is one node). Names are ``bytes`` single path components, already
checked by the VFS (no '/', no NUL, not '.' or '..', not empty, <= 255).

Errors are raised as ``OSError(errno, ...)``; the protocol layer turns them
into negative errno replies. A method a backend does not implement raises
ENOSYS (the default here) and the VFS answers accordingly.
"""
import enum
import errno
import stat
from dataclasses import dataclass
from typing import Iterator, NamedTuple

NOW = "now"        # SetAttr.atime / .mtime: the current time
RENAME_NOREPLACE = 1   # rename flags (linux/fs.h)
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4


class Ctx:
    """The caller of a request: credentials and umask (0 when unknown), the
    request's unique id (0 outside a FUSE request), and the security
    contexts [(xattr name, value)] to label a new object with."""
    __slots__ = ("uid", "gid", "pid", "umask", "unique", "secctx")

    def __init__(self, uid=0, gid=0, pid=0, umask=0, unique=0, secctx=None):
        self.uid, self.gid, self.pid, self.umask, self.unique = uid, gid, pid, umask, unique
        self.secctx = secctx

    def __repr__(self):
        return f"Ctx(uid={self.uid}, gid={self.gid}, pid={self.pid}, umask={self.umask:o})"


ROOT_CTX = Ctx()


class Attr:
    """What FUSE reports about an inode, under os.stat_result's names (times
    in integer nanoseconds): a backend that has an os.stat_result at hand
    returns it as it is, with no copy."""
    __slots__ = ("st_ino", "st_size", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
                 "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_blksize")

    def __init__(self, ino=0, size=0, blocks=0, atime_ns=0, mtime_ns=0, ctime_ns=0,
                 mode=0, nlink=1, uid=0, gid=0, rdev=0, blksize=4096):
        self.st_ino, self.st_size, self.st_blocks = ino, size, blocks
        self.st_atime_ns, self.st_mtime_ns, self.st_ctime_ns = atime_ns, mtime_ns, ctime_ns
        self.st_mode, self.st_nlink, self.st_uid, self.st_gid = mode, nlink, uid, gid
        self.st_rdev, self.st_blksize = rdev, blksize

    @classmethod
    def from_stat(cls, st):
        """A changeable copy of st (an os.stat_result or an Attr)."""
        return cls(st.st_ino, st.st_size, st.st_blocks, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, st.st_blksize)

    def __repr__(self):
        return (f"Attr(ino={self.st_ino}, mode={self.st_mode:o}, size={self.st_size}, "
                f"nlink={self.st_nlink}, uid={self.st_uid}, gid={self.st_gid})")


class SetAttr:
    """A SETATTR request: fields left None are not changed.
    atime/mtime are nanoseconds or NOW."""
    __slots__ = ("mode", "uid", "gid", "size", "atime", "mtime", "ctime", "kill_suidgid")

    def __init__(self, mode=None, uid=None, gid=None, size=None, atime=None, mtime=None,
                 ctime=None, kill_suidgid=False):
        self.mode, self.uid, self.gid, self.size = mode, uid, gid, size
        self.atime, self.mtime, self.ctime = atime, mtime, ctime
        self.kill_suidgid = kill_suidgid

    def __repr__(self):
        f = {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) not in (None, False)}
        return f"SetAttr({f})"


class StatFs(NamedTuple):
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int


class DirEntry(NamedTuple):
    name: bytes
    ino: int
    type: int          # DT_* value (mode >> 12), 0 when unknown
    next_offset: int   # cookie to resume after this entry


class Consistency(enum.Enum):
    STRONG = "strong"                # every change visible at once (host dir, memory)
    CLOSE_TO_OPEN = "close-to-open"  # data visible after close/open
    EVENTUAL = "eventual"            # object stores


@dataclass(frozen=True)
class Capabilities:
    hardlinks: bool = True
    symlinks: bool = True
    atomic_rename: bool = True
    rename_exchange: bool = True
    rename_whiteout: bool = True
    unix_permissions: bool = True
    xattrs: bool = True
    posix_locks: bool = True
    mknod: bool = True
    sparse_files: bool = True
    case_sensitive: bool = True
    posix_acl: bool = False        # stores ACL xattrs and applies default ACLs on create
    readdir_at: bool = False       # lists a directory from a cookie with no directory object open


def dtype_of(mode: int) -> int:
    return stat.S_IFMT(mode) >> 12


def _nosys(*_a, **_k):
    raise OSError(errno.ENOSYS, "not implemented by this backend")


class Backend:
    capabilities = Capabilities()
    consistency = Consistency.STRONG

    # -- inodes ---------------------------------------------------------------
    def root(self):
        """Handle of the root directory (the VFS never forgets it)."""
        raise NotImplementedError

    def lookup(self, ctx: Ctx, parent, name: bytes):
        """-> (handle, Attr). ENOENT when absent."""
        _nosys()

    def lookup_listed(self, ctx: Ctx, parent, entries) -> list:
        """READDIRPLUS: look up the entries (DirEntry) just listed from parent
        -> one (handle, Attr) per entry, None where the lookup failed (the
        name gone since the listing, say): that entry is listed without
        attributes and the guest looks it up itself when it needs it."""
        found = []
        for e in entries:
            try:
                found.append(self.lookup_entry(ctx, parent, e))
            except OSError:
                found.append(None)
        return found

    def lookup_entry(self, ctx: Ctx, parent, entry):
        """One entry of lookup_listed: a lookup of its name, unless the
        backend can use what the listing said of it."""
        return self.lookup(ctx, parent, entry.name)

    def forget(self, handle) -> None:
        """Give back one reference to handle. Every handle a backend returns
        (lookup, create, ...) is one reference, also when it is an object it
        returned before; the handle may be freed when the last one is back."""

    def getattr(self, ctx: Ctx, handle, file=None) -> Attr:
        _nosys()

    def setattr(self, ctx: Ctx, handle, file, changes: SetAttr) -> Attr:
        _nosys()

    def readlink(self, ctx: Ctx, handle) -> bytes:
        _nosys()

    def access(self, ctx: Ctx, handle, mask: int) -> None:
        _nosys()

    # -- namespace ------------------------------------------------------------
    def mknod(self, ctx: Ctx, parent, name: bytes, mode: int, rdev: int):
        """-> (handle, Attr). mode includes the file type; ctx.umask applies."""
        _nosys()

    def mkdir(self, ctx: Ctx, parent, name: bytes, mode: int):
        _nosys()

    def symlink(self, ctx: Ctx, parent, name: bytes, target: bytes):
        _nosys()

    def link(self, ctx: Ctx, handle, newparent, newname: bytes):
        """-> (handle, Attr) of the same inode."""
        _nosys()

    def unlink(self, ctx: Ctx, parent, name: bytes) -> None:
        _nosys()

    def rmdir(self, ctx: Ctx, parent, name: bytes) -> None:
        _nosys()

    def rename(self, ctx: Ctx, parent, name: bytes, newparent, newname: bytes,
               flags: int = 0) -> None:
        """flags: RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT."""
        _nosys()

    # -- files ----------------------------------------------------------------
    def open(self, ctx: Ctx, handle, flags: int):
        """-> a file object for read/write/... (O_CREAT/O_EXCL already dropped)."""
        _nosys()

    def create(self, ctx: Ctx, parent, name: bytes, mode: int, flags: int):
        """-> (handle, Attr, file, created). EEXIST only with O_EXCL;
        created is False when an existing file was opened instead."""
        _nosys()

    def tmpfile(self, ctx: Ctx, parent, mode: int, flags: int):
        """O_TMPFILE: an unnamed regular file in parent -> (handle, Attr, file).
        It can later get a name with link()."""
        raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE on this backend")

    def read(self, ctx: Ctx, file, offset: int, views) -> int:
        """Fill the memoryviews from offset (preadv); -> bytes read.
        views: a list of memoryviews, or a sequence of them that is not a
        list and has preadv(fd, offset) and pwritev(fd, offset) of its own
        (guest memory the C table walk found: device/guest_buffers.py)."""
        _nosys()

    def write(self, ctx: Ctx, file, offset: int, views, kill_suidgid: bool = False) -> int:
        """Write the memoryviews at offset (pwritev); -> bytes written (views: as read's)."""
        _nosys()

    def flush(self, ctx: Ctx, file, lock_owner: int) -> None:
        pass

    def fsync(self, ctx: Ctx, file, datasync: bool) -> None:
        _nosys()

    def release(self, ctx: Ctx, file) -> None:
        pass

    def fallocate(self, ctx: Ctx, file, mode: int, offset: int, length: int) -> None:
        _nosys()

    def lseek(self, ctx: Ctx, file, offset: int, whence: int) -> int:
        _nosys()

    def copy_file_range(self, ctx: Ctx, file_in, off_in: int, file_out, off_out: int,
                        length: int, flags: int) -> int:
        _nosys()

    # -- directories ----------------------------------------------------------
    def opendir(self, ctx: Ctx, handle, flags: int):
        """-> a directory object for readdir."""
        _nosys()

    def readdir(self, ctx: Ctx, dirobj, offset: int) -> Iterator[DirEntry]:
        """Entries after cookie `offset` (0 = from the start, including '.' and
        '..'). Cookies stay valid while the directory object is open."""
        _nosys()

    def readdir_at(self, ctx: Ctx, handle, offset: int, size: int) -> list:
        """Entries (DirEntry) of the directory handle after cookie `offset`,
        read afresh with no directory object open: about `size` bytes of
        them, none at the end. Only where capabilities.readdir_at: the
        cookies must stay valid with nothing open (the host file system's
        own), as the guest resumes from them."""
        _nosys()

    def fsyncdir(self, ctx: Ctx, dirobj, datasync: bool) -> None:
        pass

    def releasedir(self, ctx: Ctx, dirobj) -> None:
        pass

    # -- xattrs ---------------------------------------------------------------
    def setxattr(self, ctx: Ctx, handle, name: bytes, value: bytes, flags: int) -> None:
        _nosys()

    def getxattr(self, ctx: Ctx, handle, name: bytes) -> bytes:
        _nosys()

    def find_xattr(self, ctx: Ctx, handle, name: bytes):
        """getxattr, but None where the file has no such attribute (ENODATA):
        the answer to most GETXATTRs (ls asks every file for its ACLs), which
        a backend may give without raising."""
        try:
            return self.getxattr(ctx, handle, name)
        except OSError as e:
            if e.errno == errno.ENODATA:
                return None
            raise

    def listxattr(self, ctx: Ctx, handle) -> list:
        _nosys()

    def removexattr(self, ctx: Ctx, handle, name: bytes) -> None:
        _nosys()

    # -- filesystem -----------------------------------------------------------
    def statfs(self, ctx: Ctx, handle) -> StatFs:
        _nosys()

    def syncfs(self, ctx: Ctx) -> None:
        pass

    def destroy(self) -> None:
        """The filesystem is unmounted: free everything."""
