"""The FUSE server: decode one request, call the VFS, encode the reply.

Transport-agnostic: a transport hands over a Reader holding the request and
a Writer with room for the reply, and gets back the number of reply bytes
(0 when the opcode has no reply). Errors raised as OSError become negative
errno replies; a malformed request gets EINVAL or EIO, never a crash.
"""
import errno
import fcntl
import logging
import os
import select
import stat
import threading

from . import abi
from .buffers import Reader, ShortBuffer, Writer
from ..vfs.backend import NOW, ROOT_CTX, Ctx, SetAttr
from ..vfs.locks import Waiter

log = logging.getLogger("pyvirtiofsd.server")

MAX_WRITE = 1 << 20
MAX_PAGES = MAX_WRITE // 4096
HDR = abi.OUT_HEADER.size
IN_HDR = abi.IN_HEADER.size
NO_REPLY = frozenset((abi.FORGET, abi.BATCH_FORGET, abi.INTERRUPT))    # opcodes answered by nothing
DEFERRED = -1
_new_object = object.__new__


class _Wait(Exception):
    """Raised by a handler whose request must wait; run() finishes it."""

    def __init__(self, run):
        super().__init__("request waits")
        self.run = run


def _unsupported(*_):
    raise OSError(errno.ENOSYS, "unsupported opcode")


def _before_init(*_):
    raise OSError(errno.EIO, "request before INIT")

# What we accept of the kernel's INIT offer (more is added per cache mode).
BASE_FLAGS = (abi.ASYNC_READ | abi.ATOMIC_O_TRUNC | abi.BIG_WRITES | abi.ASYNC_DIO
              | abi.PARALLEL_DIROPS | abi.MAX_PAGES | abi.INIT_EXT | abi.POSIX_LOCKS | abi.FLOCK_LOCKS
              | abi.HANDLE_KILLPRIV_V2 | abi.SECURITY_CTX)

_u64 = (1 << 64) - 1


def _cstr(data: bytes) -> bytes:
    """The first NUL-terminated string of data (the terminator is required)."""
    end = data.find(b"\0")
    if end < 0:
        raise OSError(errno.EINVAL, "name without NUL terminator")
    return data[:end]


def _two_cstr(data: bytes):
    first = _cstr(data)
    return first, _cstr(data[len(first) + 1:])


def decode_dev(rdev32: int) -> int:
    """FUSE carries dev_t in the kernel's 32-bit new_encode_dev form."""
    major = (rdev32 & 0xFFF00) >> 8
    minor = (rdev32 & 0xFF) | ((rdev32 >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def encode_dev(rdev: int) -> int:
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def _split_timeout(t: float):
    sec = int(t)
    return sec, int((t - sec) * 1e9)


def _packed_attr(a):
    """An Attr as a packed fuse_attr."""
    asec, ansec = divmod(a.st_atime_ns, 1_000_000_000)
    msec, mnsec = divmod(a.st_mtime_ns, 1_000_000_000)
    csec, cnsec = divmod(a.st_ctime_ns, 1_000_000_000)
    return abi.ATTR.pack(a.st_ino, a.st_size, a.st_blocks, asec & _u64, msec & _u64, csec & _u64, ansec, mnsec, cnsec,
                         a.st_mode, a.st_nlink, a.st_uid, a.st_gid, encode_dev(a.st_rdev) if a.st_rdev else 0, a.st_blksize, 0)


_DOTS = (b".", b"..")
_NO_ENTRY = bytes(abi.ENTRY_OUT.size)
_ZEROS = bytes(8)                       # a READDIRPLUS record's padding: its name's length to 8,
assert (abi.ENTRY_OUT.size + abi.DIRENT.size) % 8 == 0          # as the rest of it is 8-aligned


class FuseServer:
    def __init__(self, vfs, *, log_requests: bool = False, readdirplus: bool | None = None,
                 opendir: bool | None = None):
        """readdirplus: offer READDIRPLUS; by default not with cache=never,
        where the guest would drop the entries and attributes it carries
        (they expire at once) and look each name up again anyway.

        opendir: answer OPENDIR with a directory handle. When not, OPENDIR
        fails with ENOSYS, and the kernel sends neither OPENDIR nor RELEASEDIR
        again (two round trips less per listing): it lists with handle 0,
        from the backend's own cookies, and keeps what it read in its page
        cache, read afresh whenever it finds the directory's mtime changed
        as it starts to list. By default handles are answered only with
        cache=never and metadata (whose guest would not look at the mtime),
        or when the backend cannot list without them."""
        self.vfs = vfs
        self.readdirplus = vfs.cache != "never" if readdirplus is None else readdirplus
        if opendir is None:
            opendir = vfs.cache not in ("auto", "always") or not vfs.caps.readdir_at
        elif not opendir and not vfs.caps.readdir_at:
            raise ValueError("this backend needs directory handles to list")
        self.opendir = opendir
        self.initialized = False
        self.destroyed = False
        self.proto_minor = 0
        self.flags = 0
        self.requests = 0           # requests served, for benchmarks
        self.log_requests = log_requests
        self._entry_valid = _split_timeout(vfs.entry_timeout)
        self._attr_valid = _split_timeout(vfs.attr_timeout)
        self._attr_head = abi.ATTR_HEAD.pack(*self._attr_valid, 0)    # of every fuse_attr_out
        self._open_flags = {"never": abi.FOPEN_DIRECT_IO, "metadata": abi.FOPEN_DIRECT_IO,
                            "auto": 0, "always": abi.FOPEN_KEEP_CACHE}[vfs.cache]
        self._opendir_flags = abi.FOPEN_KEEP_CACHE | abi.FOPEN_CACHE_DIR if vfs.cache == "always" else 0
        self._waiters = {}          # unique -> Waiter of a blocked SETLKW
        self._handlers = {}
        for op, name in abi.OPCODE_NAMES.items():
            method = getattr(self, "op_" + name.lower(), None)
            if method:
                self._handlers[op] = method

    # -- entry point --------------------------------------------------------------
    def handle(self, reader: Reader, writer: Writer, complete=None, tag=None) -> int:
        """Serve one request; return the reply length written (0: no reply).

        A request that must wait (SETLKW on a held lock) blocks the caller,
        unless the transport passes `complete`: then DEFERRED comes back at
        once and complete(tag, n) is called from another thread when the
        reply is written (tag: the transport's name for the request, so it
        need not make a callable per request).

        A handler (op_<name>) writes the reply body to the writer and returns
        None, or fails: it raises OSError, or returns an errno where a
        failure is common enough that raising would cost (every frame an
        exception passes costs ~4,000 instructions)."""
        self.requests += 1
        try:
            length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = reader.read_struct(abi.IN_HEADER)
        except ShortBuffer:
            log.warning("request shorter than fuse_in_header (%d bytes): dropped", reader.left)
            return 0
        if length < IN_HDR or length - IN_HDR > reader.left:
            log.warning("request %d: header len %d does not match the %d bytes given",
                        unique, length, reader.left + IN_HDR)
            return self._reply_error(writer, unique, errno.EINVAL)
        if self.log_requests:
            log.debug("<- %s unique=%d nodeid=%d uid=%d gid=%d pid=%d",
                      abi.OPCODE_NAMES.get(opcode, opcode), unique, nodeid, uid, gid, pid)
        handler = self._handlers.get(opcode)
        # field by field: Ctx(...) would run __init__ in a frame of its own
        # (about 1,000 instructions more per request)
        ctx = _new_object(Ctx)
        ctx.uid = uid
        ctx.gid = gid
        ctx.pid = pid
        ctx.umask = 0
        ctx.unique = unique
        ctx.secctx = None
        if extlen:
            try:
                reader = self._take_extensions(reader, extlen * 8, ctx)
            except OSError as e:
                log.warning("request %d: bad extension: %s", unique, e)
                return self._reply_error(writer, unique, errno.EINVAL)
        if opcode in NO_REPLY:
            try:
                handler(nodeid, ctx, reader, writer)
            except Exception as e:          # these have no reply to carry an error
                log.warning("%s: %s", abi.OPCODE_NAMES[opcode], e)
            return 0
        if writer.capacity < HDR:
            log.warning("request %d: reply buffer of %d bytes cannot hold a header", unique, writer.capacity)
            return 0
        writer.skip(HDR)
        if handler is None:
            handler = _unsupported
        elif not self.initialized and opcode != abi.INIT:
            handler = _before_init
        try:
            error = handler(nodeid, ctx, reader, writer)
        except _Wait as wait:
            run = wait.run              # `wait` is unbound once this block ends
        except Exception as e:
            return self._failed(e, opcode, unique, writer)
        else:                           # (success, inline: the common case)
            if error:
                return self._reply_error(writer, unique, error)
            n = writer.written
            writer.patch(0, abi.OUT_HEADER.pack(n, 0, unique))
            return n
        if complete is None:
            return self._reply(run, opcode, unique, writer)
        threading.Thread(target=lambda: complete(tag, self._reply(run, opcode, unique, writer)),
                         name=f"wait-{unique}", daemon=True).start()
        return DEFERRED

    def _reply(self, call, opcode, unique, writer):
        """Run a request that had to wait; turn its outcome into the reply header."""
        try:
            error = call()
        except _Wait:
            raise
        except Exception as e:
            return self._failed(e, opcode, unique, writer)
        if error:
            return self._reply_error(writer, unique, error)
        n = writer.written
        writer.patch(0, abi.OUT_HEADER.pack(n, 0, unique))
        return n

    def _failed(self, e, opcode, unique, writer):
        """The reply for an operation that raised e: its errno, or EIO for a bug."""
        if isinstance(e, OSError):
            error = e.errno or errno.EIO
            if error in (errno.ENOSYS, errno.EINVAL, errno.EIO, errno.ESTALE, errno.EBADF):
                log.debug("%s unique=%d -> %s (%s)", abi.OPCODE_NAMES.get(opcode, opcode), unique,
                          errno.errorcode.get(error, error), e.strerror)
        else:
            log.error("%s unique=%d failed", abi.OPCODE_NAMES.get(opcode, opcode), unique, exc_info=e)
            error = errno.EIO
        return self._reply_error(writer, unique, error)

    @staticmethod
    def _take_extensions(reader, n, ctx):
        """Split the request extensions (7.38+) off the end of the request;
        security contexts go to ctx.secctx for the object being created."""
        body = reader.read_all()
        if n > len(body):
            raise OSError(errno.EINVAL, "extensions longer than the request")
        ext, pos = body[len(body) - n:], 0
        while pos + abi.EXT_HEADER.size <= len(ext):
            size, kind = abi.EXT_HEADER.unpack_from(ext, pos)
            if size < abi.EXT_HEADER.size or pos + size > len(ext):
                raise OSError(errno.EINVAL, "bad extension size")
            if kind <= abi.MAX_NR_SECCTX:           # a fuse_secctx_header: kind is the count
                ctx.secctx = _secctx(ext[pos + abi.EXT_HEADER.size:pos + size], kind)
            pos += size
        return Reader([body[:len(body) - n]])

    def _reply_error(self, writer, unique, err):
        """The reply is the header with -err alone, whatever was written so far."""
        if writer.capacity < HDR:
            return 0
        writer.truncate(0)
        writer.write(abi.OUT_HEADER.pack(HDR, -err, unique))
        return HDR

    # -- reply helpers ---------------------------------------------------------------
    def _write_entry(self, w, nodeid, attr):
        ev, evn = self._entry_valid
        av, avn = self._attr_valid
        w.write(abi.ENTRY_HEAD.pack(nodeid, 0, ev, av, evn, avn) + _packed_attr(attr))

    def _write_created(self, w, ctx, nodeid, attr):
        """Entry of a new object, labelled first with the caller's security
        contexts (set after creation: a short window without the label)."""
        for name, value in ctx.secctx or ():
            try:
                self.vfs.setxattr(ROOT_CTX, nodeid, name, value, 0)
            except OSError as e:
                log.warning("cannot set security context %s: %s", name, e)
        self._write_entry(w, nodeid, attr)

    def _write_attr(self, w, attr):
        w.write(self._attr_head + _packed_attr(attr))

    # -- session ---------------------------------------------------------------------
    def op_init(self, nodeid, ctx, r, w):
        major, minor, max_readahead, flags = r.read_struct(abi.INIT_IN_COMPAT)
        if flags & abi.INIT_EXT and r.left >= 4:
            flags |= abi.U32.unpack(r.read(4))[0] << 32
        if major < abi.KERNEL_VERSION or (major == abi.KERNEL_VERSION and minor < 12):
            raise OSError(errno.EPROTO, f"FUSE {major}.{minor} is too old")
        if major > abi.KERNEL_VERSION:
            # ask the kernel to retry with our major version
            w.write(abi.INIT_OUT.pack(abi.KERNEL_VERSION, abi.KERNEL_MINOR_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0)[:abi.COMPAT_INIT_OUT_SIZE])
            return
        wanted = BASE_FLAGS
        if self.readdirplus:
            wanted |= abi.DO_READDIRPLUS | abi.READDIRPLUS_AUTO
        if self.vfs.backend.capabilities.posix_acl:
            # the guest checks ACLs; we apply umask ourselves, where no default ACL is
            wanted |= abi.POSIX_ACL | abi.DONT_MASK
        if self.vfs.cache in ("auto", "always"):
            wanted |= abi.AUTO_INVAL_DATA | abi.CACHE_SYMLINKS
        accepted = flags & wanted
        log.info("INIT: guest FUSE %d.%d offers %s", major, minor, _flag_names(flags))
        log.info("INIT: we accept %s", _flag_names(accepted))
        self.proto_minor = minor
        self.flags = accepted
        self.initialized = True
        self.destroyed = False
        out = abi.INIT_OUT.pack(abi.KERNEL_VERSION, abi.KERNEL_MINOR_VERSION, max_readahead,
                                accepted & 0xFFFFFFFF, 16, 12, MAX_WRITE, 1, MAX_PAGES, 0, accepted >> 32)
        w.write(out[:abi.COMPAT_22_INIT_OUT_SIZE] if minor < 23 else out)

    def op_destroy(self, nodeid, ctx, r, w):
        log.info("DESTROY: guest unmounted")
        self.vfs.reset()
        self.initialized = False
        self.destroyed = True

    def op_forget(self, nodeid, ctx, r, w):
        (n,) = r.read_struct(abi.FORGET_IN)
        self.vfs.forget(nodeid, n)

    def op_batch_forget(self, nodeid, ctx, r, w):
        count, _ = r.read_struct(abi.BATCH_FORGET_IN)
        if count * abi.FORGET_ONE.size > r.left:
            log.warning("BATCH_FORGET: count %d exceeds the request; using what is there", count)
            count = r.left // abi.FORGET_ONE.size
        data = r.read(count * abi.FORGET_ONE.size)
        for nid, n in abi.FORGET_ONE.iter_unpack(data):
            self.vfs.forget(nid, n)

    def op_interrupt(self, nodeid, ctx, r, w):
        (target,) = r.read_struct(abi.INTERRUPT_IN)
        waiter = self._waiters.get(target)
        if waiter is not None:
            self.vfs.locks.cancel(waiter)

    # -- inodes -------------------------------------------------------------------------
    def op_lookup(self, nodeid, ctx, r, w):
        name = _cstr(r.read_all())
        try:
            self._write_entry(w, *self.vfs.lookup(ctx, nodeid, name))
        except FileNotFoundError:
            if self._entry_valid == (0, 0):
                return errno.ENOENT     # (not raised again: see handle)
            # a negative entry: the guest may cache "no such name" for the entry timeout
            ev, evn = self._entry_valid
            w.pack(abi.ENTRY_OUT, 0, 0, ev, 0, evn, 0, *(0,) * 16)

    def op_getattr(self, nodeid, ctx, r, w):
        fh = None
        if r.left >= abi.GETATTR_IN.size:
            flags, _, fh_ = r.read_struct(abi.GETATTR_IN)
            if flags & abi.GETATTR_FH:
                fh = fh_
        self._write_attr(w, self.vfs.getattr(ctx, nodeid, fh))

    def op_setattr(self, nodeid, ctx, r, w):
        (valid, _, fh, size, lock_owner, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
         mode, _, uid, gid, _) = r.read_struct(abi.SETATTR_IN)
        ch = SetAttr()
        if valid & abi.FATTR_MODE:
            ch.mode = mode & 0o7777
        if valid & abi.FATTR_UID:
            ch.uid = uid
        if valid & abi.FATTR_GID:
            ch.gid = gid
        if valid & abi.FATTR_SIZE:
            ch.size = size
        if valid & abi.FATTR_ATIME:
            ch.atime = NOW if valid & abi.FATTR_ATIME_NOW else _ns(atime, atimensec)
        if valid & abi.FATTR_MTIME:
            ch.mtime = NOW if valid & abi.FATTR_MTIME_NOW else _ns(mtime, mtimensec)
        if valid & abi.FATTR_CTIME:
            ch.ctime = _ns(ctime, ctimensec)
        ch.kill_suidgid = bool(valid & abi.FATTR_KILL_SUIDGID)
        if not valid & ~(abi.FATTR_FH | abi.FATTR_LOCKOWNER) and self.flags & abi.HANDLE_KILLPRIV_V2:
            # nothing to change: with HANDLE_KILLPRIV_V2 this is chown(f, -1, -1),
            # which still clears setuid/setgid (for root too), and which the kernel leaves to us
            ch.kill_suidgid = True
        self._write_attr(w, self.vfs.setattr(ctx, nodeid, fh if valid & abi.FATTR_FH else None, ch))

    def op_readlink(self, nodeid, ctx, r, w):
        w.write(self.vfs.readlink(ctx, nodeid))

    def op_access(self, nodeid, ctx, r, w):
        mask, _ = r.read_struct(abi.ACCESS_IN)
        self.vfs.access(ctx, nodeid, mask)

    def op_statfs(self, nodeid, ctx, r, w):
        s = self.vfs.statfs(ctx, nodeid or abi.ROOT_ID)
        w.write(abi.KSTATFS.pack(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize,
                                 s.namelen, s.frsize, 0))

    # -- namespace ------------------------------------------------------------------------
    def op_mknod(self, nodeid, ctx, r, w):
        mode, rdev, ctx.umask, _ = r.read_struct(abi.MKNOD_IN)
        name = _cstr(r.read_all())
        self._write_created(w, ctx, *self.vfs.mknod(ctx, nodeid, name, mode, decode_dev(rdev)))

    def op_mkdir(self, nodeid, ctx, r, w):
        mode, ctx.umask = r.read_struct(abi.MKDIR_IN)
        name = _cstr(r.read_all())
        self._write_created(w, ctx, *self.vfs.mkdir(ctx, nodeid, name, mode & 0o7777))

    def op_symlink(self, nodeid, ctx, r, w):
        name, target = _two_cstr(r.read_all())
        self._write_created(w, ctx, *self.vfs.symlink(ctx, nodeid, name, target))

    def op_link(self, nodeid, ctx, r, w):
        (old,) = r.read_struct(abi.LINK_IN)
        name = _cstr(r.read_all())
        self._write_entry(w, *self.vfs.link(ctx, old, nodeid, name))

    def op_unlink(self, nodeid, ctx, r, w):
        self.vfs.unlink(ctx, nodeid, _cstr(r.read_all()))

    def op_rmdir(self, nodeid, ctx, r, w):
        self.vfs.rmdir(ctx, nodeid, _cstr(r.read_all()))

    def op_rename(self, nodeid, ctx, r, w):
        (newdir,) = r.read_struct(abi.RENAME_IN)
        old, new = _two_cstr(r.read_all())
        self.vfs.rename(ctx, nodeid, old, newdir, new, 0)

    def op_rename2(self, nodeid, ctx, r, w):
        newdir, flags, _ = r.read_struct(abi.RENAME2_IN)
        if flags & ~(abi.RENAME_NOREPLACE | abi.RENAME_EXCHANGE | abi.RENAME_WHITEOUT):
            raise OSError(errno.EINVAL, "unknown rename flags")
        old, new = _two_cstr(r.read_all())
        self.vfs.rename(ctx, nodeid, old, newdir, new, flags)

    # -- files ------------------------------------------------------------------------------
    def op_open(self, nodeid, ctx, r, w):
        flags, open_flags = r.read_struct(abi.OPEN_IN)
        fh = self.vfs.open(ctx, nodeid, flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY))
        if open_flags & abi.OPEN_KILL_SUIDGID:
            self._kill_suidgid(ctx, nodeid, fh)
        w.pack(abi.OPEN_OUT, fh, self._open_flags, 0)

    def _kill_suidgid(self, ctx, nodeid, fh):
        """HANDLE_KILLPRIV_V2: the kernel leaves clearing setuid/setgid to us
        when an unprivileged caller truncates on open. -> the new Attr."""
        try:
            return self.vfs.setattr(ctx, nodeid, fh, SetAttr(kill_suidgid=True))
        except BaseException:
            self.vfs.release(ctx, fh)
            raise

    def op_create(self, nodeid, ctx, r, w):
        flags, mode, ctx.umask, open_flags = r.read_struct(abi.CREATE_IN)
        name = _cstr(r.read_all())
        new, attr, fh, created = self.vfs.create(ctx, nodeid, name, stat.S_IFREG | (mode & 0o7777),
                                                 flags & ~os.O_NOCTTY)
        # O_TRUNC truncates only a file that was there: a new one keeps the mode it was made with
        if open_flags & abi.OPEN_KILL_SUIDGID and not created:
            attr = self._kill_suidgid(ctx, new, fh)
        self._write_created(w, ctx, new, attr)
        w.pack(abi.OPEN_OUT, fh, self._open_flags, 0)

    def op_tmpfile(self, nodeid, ctx, r, w):
        # the kernel sends the name "/" of its placeholder dentry: not a name to check
        flags, mode, ctx.umask, _ = r.read_struct(abi.CREATE_IN)
        new, attr, fh = self.vfs.tmpfile(ctx, nodeid, stat.S_IFREG | (mode & 0o7777), flags & ~os.O_NOCTTY)
        self._write_created(w, ctx, new, attr)
        w.pack(abi.OPEN_OUT, fh, self._open_flags, 0)

    def op_ioctl(self, nodeid, ctx, r, w):
        raise OSError(errno.ENOTTY, "no ioctls")

    def op_poll(self, nodeid, ctx, r, w):
        # files and directories here are always ready, as on a local disk
        _fh, _kh, _flags, events = r.read_struct(abi.POLL_IN)
        ready = select.POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM
        w.pack(abi.POLL_OUT, events & ready, 0)

    def op_read(self, nodeid, ctx, r, w):
        fh, offset, size, _, _, _, _ = r.read_struct(abi.READ_IN)
        size = min(size, MAX_WRITE, w.available())
        views = w.views(size)
        got = self.vfs.read(ctx, fh, offset, views)
        if got < size:                  # a short read (end of file): the rest is not sent
            w.truncate(HDR + got)

    def op_write(self, nodeid, ctx, r, w):
        fh, offset, size, flags, _, _, _ = r.read_struct(abi.WRITE_IN)
        if size > r.left:
            raise OSError(errno.EINVAL, f"WRITE of {size} bytes carries only {r.left}")
        n = self.vfs.write(ctx, fh, offset, r.views(size), bool(flags & abi.WRITE_KILL_SUIDGID))
        w.pack(abi.WRITE_OUT, n, 0)

    def op_flush(self, nodeid, ctx, r, w):
        fh, _, _, lock_owner = r.read_struct(abi.FLUSH_IN)
        self.vfs.flush(ctx, fh, lock_owner)

    def op_release(self, nodeid, ctx, r, w):
        fh, _, release_flags, lock_owner = r.read_struct(abi.RELEASE_IN)
        self.vfs.release(ctx, fh, lock_owner if release_flags & abi.RELEASE_FLOCK_UNLOCK else None)

    # -- locks -------------------------------------------------------------------------------
    def op_getlk(self, nodeid, ctx, r, w):
        fh, owner, start, end, type_, pid, lk_flags, _ = r.read_struct(abi.LK_IN)
        held = self.vfs.getlk(ctx, fh, owner, start, end, type_, bool(lk_flags & abi.LK_FLOCK))
        w.write(abi.LK_OUT.pack(*(held or (start, end, fcntl.F_UNLCK, 0))))

    def op_setlk(self, nodeid, ctx, r, w, wait=False):
        fh, owner, start, end, type_, pid, lk_flags, _ = r.read_struct(abi.LK_IN)
        flock = bool(lk_flags & abi.LK_FLOCK)
        ctx.pid = pid or ctx.pid
        try:
            self.vfs.setlk(ctx, fh, owner, start, end, type_, flock)
        except BlockingIOError:
            if not wait:
                raise
            waiter = self._waiters[ctx.unique] = Waiter()

            def run():
                try:
                    self.vfs.setlk(ctx, fh, owner, start, end, type_, flock, waiter)
                finally:
                    self._waiters.pop(ctx.unique, None)
            raise _Wait(run) from None

    def op_setlkw(self, nodeid, ctx, r, w):
        self.op_setlk(nodeid, ctx, r, w, wait=True)

    def op_fsync(self, nodeid, ctx, r, w):
        fh, flags, _ = r.read_struct(abi.FSYNC_IN)
        self.vfs.fsync(ctx, fh, bool(flags & abi.FSYNC_FDATASYNC))

    def op_fallocate(self, nodeid, ctx, r, w):
        fh, offset, length, mode, _ = r.read_struct(abi.FALLOCATE_IN)
        self.vfs.fallocate(ctx, fh, mode, offset, length)

    def op_lseek(self, nodeid, ctx, r, w):
        fh, offset, whence, _ = r.read_struct(abi.LSEEK_IN)
        w.pack(abi.LSEEK_OUT, self.vfs.lseek(ctx, fh, offset, whence))

    def op_copy_file_range(self, nodeid, ctx, r, w):
        fh_in, off_in, _nodeid_out, fh_out, off_out, length, flags = r.read_struct(abi.COPY_FILE_RANGE_IN)
        n = self.vfs.copy_file_range(ctx, fh_in, off_in, fh_out, off_out, min(length, 0xFFFFFFFF), flags)
        w.pack(abi.WRITE_OUT, n, 0)

    # -- directories -------------------------------------------------------------------------
    def op_opendir(self, nodeid, ctx, r, w):
        if not self.opendir:
            return errno.ENOSYS         # (the kernel then lists with handle 0: see __init__)
        flags, _ = r.read_struct(abi.OPEN_IN)
        w.pack(abi.OPEN_OUT, self.vfs.opendir(ctx, nodeid, flags), self._opendir_flags, 0)

    def op_readdir(self, nodeid, ctx, r, w):
        fh, offset, size, _, _, _, _ = r.read_struct(abi.READ_IN)
        room = min(size, w.available())
        out = []                        # (one write for all: a write per entry cost ~2,000 instructions)
        for e in self._listing(ctx, nodeid, fh, offset, room):
            rec = abi.dirent_size(len(e.name))
            if rec > room:
                break
            room -= rec
            out.append(abi.DIRENT.pack(e.ino, e.next_offset, len(e.name), e.type) + e.name
                       + b"\0" * (rec - abi.DIRENT.size - len(e.name)))
        w.write(b"".join(out))

    def op_readdirplus(self, nodeid, ctx, r, w):
        fh, offset, size, _, _, _, _ = r.read_struct(abi.READ_IN)
        room = min(size, w.available())
        listed = []
        # (a host dirent is about a quarter of a record here: ask for a third of the room)
        for e in self._listing(ctx, nodeid, fh, offset, room // 3):
            room -= abi.dirent_size(len(e.name), plus=True)
            if room < 0:
                break
            listed.append(e)
        # the kernel ignores the entries of '.' and '..' and counts no lookup for them
        found = iter(self.vfs.lookup_listed(ctx, nodeid, [e for e in listed if e.name not in _DOTS]))
        entry_head = abi.ENTRY_HEAD.pack
        dirent = abi.DIRENT.pack
        ev, evn = self._entry_valid
        av, avn = self._attr_valid
        out = []                        # (one write for all, as in READDIR)
        put = out.append
        for e in listed:
            name = e.name
            f = None if name in _DOTS else next(found)
            if f is None:               # (nodeid 0: the guest takes the name without attributes)
                put(_NO_ENTRY)
            else:
                put(entry_head(f[0], 0, ev, av, evn, avn))
                put(_packed_attr(f[1]))
            put(dirent(e.ino, e.next_offset, len(name), e.type))
            put(name)
            put(_ZEROS[:-len(name) & 7])
        w.write(b"".join(out))

    def _listing(self, ctx, nodeid, fh, offset, size):
        """The entries after offset: from the directory handle, or with none
        (see opendir in __init__), about size bytes of them."""
        if fh or self.opendir:
            return self.vfs.readdir(ctx, fh, offset)
        return self.vfs.readdir_at(ctx, nodeid, offset, size)

    def op_releasedir(self, nodeid, ctx, r, w):
        fh, _, _, _ = r.read_struct(abi.RELEASE_IN)
        self.vfs.releasedir(ctx, fh)

    def op_fsyncdir(self, nodeid, ctx, r, w):
        fh, flags, _ = r.read_struct(abi.FSYNC_IN)
        if fh or self.opendir:
            self.vfs.fsyncdir(ctx, fh, bool(flags & abi.FSYNC_FDATASYNC))
        else:
            self.vfs.fsyncdir_at(ctx, nodeid, bool(flags & abi.FSYNC_FDATASYNC))

    # -- xattrs -----------------------------------------------------------------------------
    def op_setxattr(self, nodeid, ctx, r, w):
        if self.flags & abi.SETXATTR_EXT:
            size, flags, _, _ = r.read_struct(abi.SETXATTR_IN)
        else:
            size, flags = r.read_struct(abi.GETXATTR_IN)
        rest = r.read_all()
        name = _cstr(rest)
        value = rest[len(name) + 1:len(name) + 1 + size]
        if len(value) != size:
            raise OSError(errno.EINVAL, "xattr value shorter than its size")
        self.vfs.setxattr(ctx, nodeid, name, value, flags)

    def op_getxattr(self, nodeid, ctx, r, w):
        size, _ = r.read_struct(abi.GETXATTR_IN)
        value = self.vfs.getxattr(ctx, nodeid, _cstr(r.read_all()))
        if value is None:
            return errno.ENODATA        # (returned, not raised: see handle)
        self._sized_reply(w, size, value)

    def op_listxattr(self, nodeid, ctx, r, w):
        size, _ = r.read_struct(abi.GETXATTR_IN)
        names = self.vfs.listxattr(ctx, nodeid)
        self._sized_reply(w, size, b"".join(n + b"\0" for n in names))

    def _sized_reply(self, w, size, data):
        """getxattr/listxattr: size 0 asks for the length only."""
        if size == 0:
            w.pack(abi.GETXATTR_OUT, len(data), 0)
        elif len(data) > size:
            raise OSError(errno.ERANGE, "value larger than the buffer")
        else:
            w.write(data)

    def op_removexattr(self, nodeid, ctx, r, w):
        self.vfs.removexattr(ctx, nodeid, _cstr(r.read_all()))

    def op_syncfs(self, nodeid, ctx, r, w):
        self.vfs.syncfs(ctx)


def _secctx(data, count):
    """[(xattr name, value)] from the entries after a fuse_secctx_header."""
    out, pos = [], 0
    for _ in range(count):
        size, _ = abi.SECCTX.unpack_from(data, pos)
        pos += abi.SECCTX.size
        name = _cstr(data[pos:])
        pos += len(name) + 1
        value = data[pos:pos + size]
        if len(value) != size or not name.startswith(b"security."):
            raise OSError(errno.EINVAL, "bad security context")
        out.append((name, value))
        pos = (pos + size + 7) & ~7
    return out


def _ns(sec, nsec):
    if sec >= 1 << 63:
        sec -= 1 << 64
    return sec * 1_000_000_000 + nsec


def _flag_names(flags):
    return " ".join(name for bit, name in sorted(abi.INIT_FLAG_NAMES.items()) if flags & bit) or "-"
