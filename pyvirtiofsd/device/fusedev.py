"""The FUSE server served through /dev/fuse: a host mount of the same VFS.

One open of /dev/fuse is one FUSE connection. mount(2) with ``fd=N`` binds
the connection to a mount point; from then on the kernel queues requests on
the fd. Each worker thread reads one whole request per read(2) into its own
buffer, hands it to ``server.handle()`` as a Reader/Writer pair (the same
ones the virtio transport uses) and writes the reply back in one write(2).

Workers wait in poll(2) on the fuse fd and on a wake-up pipe, so a session
can always be stopped: after the unmount (or when it cannot unmount because
a file is still open: lazily, MNT_DETACH) the pipe wakes every worker, and
closing the fd then aborts the connection, so nothing that still uses the
detached mount can hang (it gets ENOTCONN).

Errors from read(2): ENOENT (request interrupted before we got it), EINTR,
EAGAIN (another worker took it) -> read again; ENODEV (the file system was
unmounted from outside and the connection is gone) -> stop every worker.
ENOENT from write(2) means the request was interrupted: the reply is dropped.
"""
import errno
import logging
import os
import select
import signal
import stat
import threading

from .. import syscalls
from ..protocol import abi
from ..protocol.buffers import Reader, Writer

# The kernel wants every read buffer to hold max_write plus the request
# headers (fuse_in_header + fuse_write_in); the server's INIT reply says
# max_write = 1 MiB. Replies (READ data, readdir pages) fit the same size.
MAX_WRITE = 1 << 20
BUFFER_SIZE = MAX_WRITE + 4096

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class FuseSession:
    """One /dev/fuse connection mounted on ``mountpoint`` and its workers.

    mount() -> start() -> wait() -> close(); serve() does all of it.
    close() is idempotent and safe from any thread but a worker."""

    def __init__(self, server, mountpoint, *, threads=2, fsname="pyvirtiofsd",
                 log=logging.getLogger("pyvirtiofsd"), mount_options=()):
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.server = server
        self.mountpoint = os.path.abspath(mountpoint)
        self.threads = threads
        self.fsname = fsname
        self.log = log
        self.mount_options = tuple(mount_options)
        self.fd = -1
        self.mounted = False
        self.workers = []
        self.requests = 0
        self._lock = threading.Lock()
        self._closed = False
        # worker wake-up: written once, never drained, so every poll sees it
        self._quit_r, self._quit_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # wait() wake-up: stop requested (signal, close, connection gone)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    # -- lifecycle -------------------------------------------------------------------
    def mount(self):
        st = os.stat(self.mountpoint)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "mount point is not a directory", self.mountpoint)
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        opts = ",".join((f"fd={self.fd}", f"rootmode={stat.S_IFDIR:o}",
                         f"user_id={os.getuid()}", f"group_id={os.getgid()}",
                         "default_permissions", "allow_other") + self.mount_options)
        flags = syscalls.MS_NOSUID | syscalls.MS_NODEV
        try:
            try:
                syscalls.mount(self.fsname, self.mountpoint, "fuse.pyvirtiofsd", flags, opts)
            except OSError as e:
                if e.errno != errno.ENODEV:      # a kernel without "fuse.subtype" support
                    raise
                syscalls.mount(self.fsname, self.mountpoint, "fuse", flags, opts)
        except OSError:
            os.close(self.fd)
            self.fd = -1
            raise
        self.mounted = True
        self.log.info("mounted %s on %s (/dev/fuse fd %d)", self.fsname, self.mountpoint, self.fd)

    def start(self):
        with self._lock:            # so that close() joins every worker started here
            if self._closed:
                return
            for i in range(self.threads):
                t = threading.Thread(target=self._worker, name=f"fusedev-{i}", daemon=True)
                self.workers.append(t)
                t.start()

    def wait(self):
        """Block until a stop is requested (request_stop(), a worker saw the
        connection end). Signal handlers run in between (EINTR is retried)."""
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        while True:
            if poller.poll():
                return

    def request_stop(self):
        """Ask wait() to return. Async-signal-safe enough: one write to a pipe."""
        try:
            os.write(self._stop_w, b"s")
        except OSError:         # pipe full (already requested) or closed
            pass

    def unmount(self):
        """Take the mount away: a plain unmount, or lazily when it is busy."""
        if not self.mounted:
            return
        self.mounted = False
        try:
            syscalls.umount2(self.mountpoint, 0)
            self.log.info("unmounted %s", self.mountpoint)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):   # unmounted from outside already
                return
            self.log.warning("umount %s: %s; detaching lazily", self.mountpoint, e.strerror)
            try:
                syscalls.umount2(self.mountpoint, syscalls.MNT_DETACH)
            except OSError as e2:
                if e2.errno not in (errno.EINVAL, errno.ENOENT):
                    self.log.error("umount2(MNT_DETACH) %s: %s", self.mountpoint, e2.strerror)

    def close(self, join_timeout=10.0):
        """Unmount, stop the workers, close the connection (which aborts it,
        so nothing left on a detached mount can hang)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.unmount()
        try:
            os.write(self._quit_w, b"q")
        except OSError:
            pass
        stuck = False
        for t in self.workers:
            if t is not threading.current_thread():
                t.join(join_timeout)
                if t.is_alive():
                    stuck = True
                    self.log.error("%s did not stop within %.0fs", t.name, join_timeout)
        if self.fd >= 0:
            os.close(self.fd)        # aborts the connection: a detached mount answers ENOTCONN
            self.fd = -1
        self.request_stop()
        if not stuck:                # a stuck worker may still touch the pipes: leave them
            for fd in (self._quit_r, self._quit_w, self._stop_r, self._stop_w):
                os.close(fd)

    # -- the request loop ---------------------------------------------------------------
    def _worker(self):
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        out = bytearray(BUFFER_SIZE)
        outview = memoryview(out)
        fd = self.fd
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._quit_r, select.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._quit_r in events:
                    return
                if not events.get(fd):
                    continue
                try:
                    n = os.readv(fd, [buf])
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                        continue
                    if e.errno == errno.ENODEV:
                        self.log.info("%s: the file system was unmounted", self.mountpoint)
                    elif e.errno == errno.ECONNABORTED:     # (aborted: by close(), or from fusectl)
                        self.log.info("%s: the connection was aborted", self.mountpoint)
                    else:
                        self.log.error("read /dev/fuse: %s", e.strerror)
                    return
                if n == 0 or not self._handle(fd, view[:n], outview):
                    return
        except Exception:
            self.log.exception("fusedev worker %s died", threading.current_thread().name)
        finally:
            # one worker leaving means the connection is gone (or we are closing):
            # let wait() return so the session is torn down
            self.request_stop()

    def _handle(self, fd, request, outview) -> bool:
        """Serve one request; False when the connection is gone."""
        self.requests += 1
        try:
            n = self.server.handle(Reader([request]), Writer([outview]))
        except Exception:           # the server answers errors itself; this is a bug
            self.log.exception("server.handle raised; answering EIO")
            n = _error_reply(request, outview, errno.EIO)
        if n <= 0:
            return True
        try:
            os.write(fd, outview[:n])
        except OSError as e:
            if e.errno == errno.ENOENT:     # the request was interrupted meanwhile
                return True
            if e.errno == errno.ENODEV:
                self.log.info("%s: the file system was unmounted", self.mountpoint)
                return False
            opcode = abi.IN_HEADER.unpack_from(request)[1] if len(request) >= abi.IN_HEADER.size else -1
            self.log.error("write reply to %s (%d bytes): %s",
                           abi.OPCODE_NAMES.get(opcode, opcode), n, e.strerror)
        return True


def _error_reply(request, outview, err):
    if len(request) < abi.IN_HEADER.size:
        return 0
    unique = abi.IN_HEADER.unpack_from(request)[2]
    abi.OUT_HEADER.pack_into(outview, 0, abi.OUT_HEADER.size, -err, unique)
    return abi.OUT_HEADER.size


def serve(server, mountpoint, *, threads=2, fsname="pyvirtiofsd",
          log=logging.getLogger("pyvirtiofsd"), ready=None) -> int:
    """Mount ``server`` on ``mountpoint`` and serve it until the file system
    is unmounted or (from the main thread) SIGINT/SIGTERM arrives; always
    unmount before returning 0. ``ready`` (a callable or a threading.Event)
    is called/set once mounted."""
    session = FuseSession(server, mountpoint, threads=threads, fsname=fsname, log=log)
    old_handlers = {}
    try:
        if threading.current_thread() is threading.main_thread():
            # before the mount: a signal at any moment from here on unmounts
            def on_signal(signum, frame):
                log.info("%s: unmounting %s", signal.Signals(signum).name, session.mountpoint)
                session.request_stop()
            for sig in _STOP_SIGNALS:
                old_handlers[sig] = signal.signal(sig, on_signal)
        session.mount()
        session.start()
        if ready is not None:
            ready.set() if isinstance(ready, threading.Event) else ready()
        session.wait()
    finally:
        session.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    log.info("served %d requests", session.requests)
    return 0
