"""A minimal FUSE client for tests: packs requests the way the Linux kernel
does and decodes replies. The transport is any callable
``send(request: bytes, reply_room: int) -> bytes`` (the reply, b"" if none),
so the same client drives the server directly or through vhost-user."""
import errno
import os
import struct
from dataclasses import dataclass

from pyvirtiofsd.protocol import abi
from pyvirtiofsd.protocol.buffers import Reader, Writer


class FuseError(OSError):
    pass


@dataclass
class Attr:
    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int

    @property
    def mtime_ns(self):
        return self.mtime * 10**9 + self.mtimensec

    @property
    def atime_ns(self):
        return self.atime * 10**9 + self.atimensec


@dataclass
class Entry:
    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    attr: Attr


def direct_transport(server):
    """Call server.handle() in-process with plain buffers."""
    def send(request: bytes, room: int) -> bytes:
        buf = bytearray(room)
        n = server.handle(Reader([request]), Writer([buf]))
        return bytes(buf[:n])
    return send


def errno_of(fn, *args, **kwargs):
    """The errno a client call fails with (it must fail)."""
    try:
        fn(*args, **kwargs)
    except FuseError as e:
        return e.errno
    raise AssertionError(f"{fn.__name__} succeeded")


def serve(backend, cache="auto", opendir=None, **client_kw):
    """A client talking straight to FuseServer(Vfs(backend)), after INIT."""
    from pyvirtiofsd.protocol.server import FuseServer
    from pyvirtiofsd.vfs.vfs import Vfs
    c = FuseClient(direct_transport(FuseServer(Vfs(backend, cache=cache), opendir=opendir)), **client_kw)
    c.init()
    return c


class FuseClient:
    def __init__(self, send, uid=0, gid=0, pid=1):
        self.send = send
        self.uid, self.gid, self.pid = uid, gid, pid
        self.unique = 0
        self.no_opendir = False         # the server answered OPENDIR with ENOSYS

    # -- raw ------------------------------------------------------------------------
    def request(self, opcode, nodeid=0, body=b"", room=1 << 17, uid=None, gid=None):
        """-> (error, payload). error is 0 or a positive errno."""
        self.unique += 1
        hdr = abi.IN_HEADER.pack(abi.IN_HEADER.size + len(body), opcode, self.unique, nodeid,
                                 self.uid if uid is None else uid, self.gid if gid is None else gid,
                                 self.pid, 0, 0)
        reply = self.send(hdr + body, room)
        if not reply:
            return None, b""
        length, error, unique = abi.OUT_HEADER.unpack_from(reply)
        assert length == len(reply), f"reply length field {length} != {len(reply)}"
        assert unique == self.unique, "reply for another request"
        return -error, reply[abi.OUT_HEADER.size:]

    def call(self, opcode, nodeid=0, body=b"", **kw):
        err, payload = self.request(opcode, nodeid, body, **kw)
        if err:
            raise FuseError(err, os.strerror(err))
        return payload

    # -- decoded ---------------------------------------------------------------------
    def init(self, flags=0xFFFFFFFF, minor=abi.KERNEL_MINOR_VERSION):
        out = self.call(abi.INIT, 0, abi.INIT_IN_EXT.pack(7, minor, 131072, flags | abi.INIT_EXT, 0))
        return abi.INIT_OUT.unpack(out)

    @staticmethod
    def _entry(payload):
        f = abi.ENTRY_OUT.unpack(payload)
        return Entry(f[0], f[1], f[2], f[3], Attr(*f[6:]))

    @staticmethod
    def _attr(payload):
        return Attr(*abi.ATTR_OUT.unpack(payload)[3:])

    def lookup(self, parent, name: bytes):
        """A negative entry (node id 0) means ENOENT, as to the kernel."""
        e = self._entry(self.call(abi.LOOKUP, parent, name + b"\0"))
        if e.nodeid == 0:
            raise FuseError(errno.ENOENT, "negative entry")
        return e

    def forget(self, nodeid, n):
        self.request(abi.FORGET, nodeid, abi.FORGET_IN.pack(n))

    def batch_forget(self, pairs):
        body = abi.BATCH_FORGET_IN.pack(len(pairs), 0) + b"".join(abi.FORGET_ONE.pack(*p) for p in pairs)
        self.request(abi.BATCH_FORGET, 0, body)

    def getattr(self, nodeid, fh=None):
        body = abi.GETATTR_IN.pack(abi.GETATTR_FH if fh is not None else 0, 0, fh or 0)
        return self._attr(self.call(abi.GETATTR, nodeid, body))

    def setattr(self, nodeid, *, mode=None, uid=None, gid=None, size=None, atime=None, mtime=None,
                fh=None, atime_now=False, mtime_now=False):
        valid = 0
        for bit, v in ((abi.FATTR_MODE, mode), (abi.FATTR_UID, uid), (abi.FATTR_GID, gid),
                       (abi.FATTR_SIZE, size), (abi.FATTR_ATIME, atime), (abi.FATTR_MTIME, mtime),
                       (abi.FATTR_FH, fh)):
            if v is not None:
                valid |= bit
        if atime_now:
            valid |= abi.FATTR_ATIME | abi.FATTR_ATIME_NOW
        if mtime_now:
            valid |= abi.FATTR_MTIME | abi.FATTR_MTIME_NOW
        a, an = divmod(atime or 0, 10**9)
        m, mn = divmod(mtime or 0, 10**9)
        body = abi.SETATTR_IN.pack(valid, 0, fh or 0, size or 0, 0, a, m, 0, an, mn, 0,
                                   mode or 0, 0, uid or 0, gid or 0, 0)
        return self._attr(self.call(abi.SETATTR, nodeid, body))

    def mkdir(self, parent, name, mode=0o755, umask=0):
        return self._entry(self.call(abi.MKDIR, parent, abi.MKDIR_IN.pack(mode, umask) + name + b"\0"))

    def mknod(self, parent, name, mode, rdev=0, umask=0):
        return self._entry(self.call(abi.MKNOD, parent, abi.MKNOD_IN.pack(mode, rdev, umask, 0) + name + b"\0"))

    def symlink(self, parent, name, target):
        return self._entry(self.call(abi.SYMLINK, parent, name + b"\0" + target + b"\0"))

    def link(self, nodeid, newparent, newname):
        return self._entry(self.call(abi.LINK, newparent, abi.LINK_IN.pack(nodeid) + newname + b"\0"))

    def readlink(self, nodeid):
        return self.call(abi.READLINK, nodeid)

    def unlink(self, parent, name):
        self.call(abi.UNLINK, parent, name + b"\0")

    def rmdir(self, parent, name):
        self.call(abi.RMDIR, parent, name + b"\0")

    def rename(self, parent, name, newparent, newname, flags=0):
        if flags:
            self.call(abi.RENAME2, parent, abi.RENAME2_IN.pack(newparent, flags, 0) + name + b"\0" + newname + b"\0")
        else:
            self.call(abi.RENAME, parent, abi.RENAME_IN.pack(newparent) + name + b"\0" + newname + b"\0")

    def create(self, parent, name, mode=0o644, flags=os.O_RDWR, umask=0):
        out = self.call(abi.CREATE, parent, abi.CREATE_IN.pack(flags, mode, umask, 0) + name + b"\0")
        fh, open_flags, _ = abi.OPEN_OUT.unpack_from(out, abi.ENTRY_OUT.size)
        return self._entry(out[:abi.ENTRY_OUT.size]), fh

    def open(self, nodeid, flags=os.O_RDWR):
        return abi.OPEN_OUT.unpack(self.call(abi.OPEN, nodeid, abi.OPEN_IN.pack(flags, 0)))[0]

    def opendir(self, nodeid):
        """-> the directory handle; 0 when the server has none to give, after
        which, as the kernel does, the client asks no more (nor releases)."""
        if self.no_opendir:
            return 0
        err, out = self.request(abi.OPENDIR, nodeid, abi.OPEN_IN.pack(os.O_RDONLY, 0))
        if err == errno.ENOSYS:
            self.no_opendir = True
            return 0
        if err:
            raise FuseError(err, os.strerror(err))
        return abi.OPEN_OUT.unpack(out)[0]

    def read(self, nodeid, fh, offset, size):
        return self.call(abi.READ, nodeid, abi.READ_IN.pack(fh, offset, size, 0, 0, 0, 0),
                         room=abi.OUT_HEADER.size + size)

    def write(self, nodeid, fh, offset, data, flags=0):
        out = self.call(abi.WRITE, nodeid, abi.WRITE_IN.pack(fh, offset, len(data), flags, 0, 0, 0) + data)
        return abi.WRITE_OUT.unpack(out)[0]

    def release(self, nodeid, fh):
        self.call(abi.RELEASE, nodeid, abi.RELEASE_IN.pack(fh, 0, 0, 0))

    def releasedir(self, nodeid, fh):
        if self.no_opendir:
            return
        self.call(abi.RELEASEDIR, nodeid, abi.RELEASE_IN.pack(fh, 0, 0, 0))

    def flush(self, nodeid, fh):
        self.call(abi.FLUSH, nodeid, abi.FLUSH_IN.pack(fh, 0, 0, 0))

    def fsync(self, nodeid, fh, datasync=False, op=abi.FSYNC):
        self.call(op, nodeid, abi.FSYNC_IN.pack(fh, abi.FSYNC_FDATASYNC if datasync else 0, 0))

    def readdir(self, nodeid, fh, offset=0, size=4096, plus=False):
        """-> list of (name, ino, type, off[, Entry])."""
        out = self.call(abi.READDIRPLUS if plus else abi.READDIR, nodeid,
                        abi.READ_IN.pack(fh, offset, size, 0, 0, 0, 0), room=abi.OUT_HEADER.size + size)
        entries, pos = [], 0
        while pos < len(out):
            entry = None
            if plus:
                entry = self._entry(out[pos:pos + abi.ENTRY_OUT.size])
                pos += abi.ENTRY_OUT.size
            ino, off, namelen, typ = abi.DIRENT.unpack_from(out, pos)
            name = out[pos + abi.DIRENT.size:pos + abi.DIRENT.size + namelen]
            pos += abi.dirent_size(namelen)
            entries.append((name, ino, typ, off, entry) if plus else (name, ino, typ, off))
        return entries

    def getlk(self, nodeid, fh, owner, start, end, type_, flock=False):
        """-> (start, end, type, pid) of a blocking lock, type F_UNLCK if none."""
        body = abi.LK_IN.pack(fh, owner, start, end, type_, self.pid, abi.LK_FLOCK if flock else 0, 0)
        return abi.LK_OUT.unpack(self.call(abi.GETLK, nodeid, body))

    def setlk(self, nodeid, fh, owner, start, end, type_, flock=False, wait=False):
        body = abi.LK_IN.pack(fh, owner, start, end, type_, self.pid, abi.LK_FLOCK if flock else 0, 0)
        self.call(abi.SETLKW if wait else abi.SETLK, nodeid, body)

    def statfs(self, nodeid=1):
        return abi.KSTATFS.unpack(self.call(abi.STATFS, nodeid))[:8]

    def access(self, nodeid, mask):
        self.call(abi.ACCESS, nodeid, abi.ACCESS_IN.pack(mask, 0))

    def setxattr(self, nodeid, name, value, flags=0):
        self.call(abi.SETXATTR, nodeid, abi.GETXATTR_IN.pack(len(value), flags) + name + b"\0" + value)

    def getxattr(self, nodeid, name, size=65536):
        out = self.call(abi.GETXATTR, nodeid, abi.GETXATTR_IN.pack(size, 0) + name + b"\0")
        return abi.GETXATTR_OUT.unpack(out)[0] if size == 0 else out

    def listxattr(self, nodeid, size=65536):
        out = self.call(abi.LISTXATTR, nodeid, abi.GETXATTR_IN.pack(size, 0))
        if size == 0:
            return abi.GETXATTR_OUT.unpack(out)[0]
        return [n for n in out.split(b"\0") if n]

    def removexattr(self, nodeid, name):
        self.call(abi.REMOVEXATTR, nodeid, name + b"\0")

    def fallocate(self, nodeid, fh, offset, length, mode=0):
        self.call(abi.FALLOCATE, nodeid, abi.FALLOCATE_IN.pack(fh, offset, length, mode, 0))

    def lseek(self, nodeid, fh, offset, whence):
        return abi.LSEEK_OUT.unpack(self.call(abi.LSEEK, nodeid, abi.LSEEK_IN.pack(fh, offset, whence, 0)))[0]

    def copy_file_range(self, nodeid, fh_in, off_in, nodeid_out, fh_out, off_out, length):
        out = self.call(abi.COPY_FILE_RANGE, nodeid,
                        abi.COPY_FILE_RANGE_IN.pack(fh_in, off_in, nodeid_out, fh_out, off_out, length, 0))
        return abi.WRITE_OUT.unpack(out)[0]

    def syncfs(self):
        self.call(abi.SYNCFS, 1, struct.pack("<Q", 0))

    def destroy(self):
        self.call(abi.DESTROY, 0)


__all__ = ["FuseClient", "FuseError", "direct_transport", "errno_of", "serve"]
