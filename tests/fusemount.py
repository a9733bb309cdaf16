"""Host FUSE mounts for tests: our server served through /dev/fuse.

    with mounted(HostBackend(dir)) as mnt:          # in-process worker threads
        os.listdir(mnt)
    with mounted_subprocess(dir) as (mnt, proc):    # `python -m pyvirtiofsd --mount`
        ...

Both always unmount, lazily (MNT_DETACH) when something still holds the
mount, and the in-process one then closes the /dev/fuse connection, which
aborts it: a failed test never leaves a mount behind, and nothing that still
points into it can hang (it gets ENOTCONN).

A test that touches its own in-process mount does not deadlock: the workers
are separate threads and wait in poll/read with the GIL released.
"""
import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

from pyvirtiofsd import syscalls
from pyvirtiofsd.device import fusedev
from pyvirtiofsd.protocol import abi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_fuse():
    """These tests must run (root, /dev/fuse); fail loudly, never skip."""
    if not os.path.exists("/dev/fuse"):
        raise RuntimeError("/dev/fuse is missing: host-mount tests cannot run")
    if os.geteuid() != 0:
        raise RuntimeError("host-mount tests need root (mount(2) of a fuse file system)")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts():
    """[(mount point, fs type, source)] from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            out.append((_unescape(fields[4]), rfields[0], _unescape(rfields[1])))
    return out


def is_mounted(path, fstype_prefix="fuse"):
    path = os.path.realpath(path)
    return any(mp == path and t.startswith(fstype_prefix) for mp, t, _ in mounts())


def our_mounts():
    return [mp for mp, t, src in mounts() if t.startswith("fuse") and src == "pyvirtiofsd"]


def wait_until(cond, timeout, what, interval=0.01):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def force_unmount(path):
    """Unmount whatever fuse mount is on path (lazily if busy); quiet if none."""
    while is_mounted(path):
        try:
            syscalls.umount2(path, 0)
        except OSError as e:
            if e.errno == errno.EBUSY:
                syscalls.umount2(path, syscalls.MNT_DETACH)
            elif e.errno not in (errno.EINVAL, errno.ENOENT):
                raise


def make_server(obj, cache="never"):
    """A FuseServer from a server, a Vfs or a Backend."""
    if hasattr(obj, "handle"):
        return obj
    from pyvirtiofsd.protocol.server import FuseServer
    from pyvirtiofsd.vfs.vfs import Vfs
    if isinstance(obj, Vfs):
        return FuseServer(obj)
    return FuseServer(Vfs(obj, cache=cache))


@contextlib.contextmanager
def _mountpoint(mountpoint):
    if mountpoint is not None:
        yield os.path.abspath(mountpoint)
        return
    d = tempfile.mkdtemp(prefix="pyvfs-mnt-")
    try:
        yield d
    finally:
        force_unmount(d)
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def mounted(backend_or_vfs, mountpoint=None, *, threads=2, cache="never", timeout=10.0, **opts):
    """Serve a Backend, Vfs or server on a host mount from worker threads of
    this process; yield the mount point; always unmount. cache="never" by
    default so the kernel asks us for everything (the differential tests
    want our answers, not the kernel's cached ones). The session object is
    reachable as mounted.last_session (for tests of fusedev itself)."""
    require_fuse()
    server = make_server(backend_or_vfs, cache)
    with _mountpoint(mountpoint) as mnt:
        session = fusedev.FuseSession(server, mnt, threads=threads, **opts)
        failure = []

        def run():
            try:
                session.mount()
                session.start()
                session.wait()
            except BaseException as e:      # reported to the test thread
                failure.append(e)
                session.request_stop()

        t = threading.Thread(target=run, name="fusedev-session", daemon=True)
        t.start()
        mounted.last_session = session
        try:
            wait_until(lambda: is_mounted(mnt) or failure, timeout, f"the mount on {mnt}")
            if failure:
                raise failure[0]
            os.stat(mnt)            # INIT answered: the file system is live
            yield mnt
        finally:
            session.close()
            t.join(timeout)
            force_unmount(mnt)
            assert not t.is_alive(), "fusedev session thread did not stop"
            # the connection was aborted, so no FORGET or DESTROY comes: drop
            # what the kernel still held (a host backend's descriptors)
            vfs = getattr(server, "vfs", None)
            if vfs is not None:
                vfs.reset()


mounted.last_session = None


def pyvirtiofsd_cmd(shared_dir, mnt, *args):
    return [sys.executable, "-m", "pyvirtiofsd", "--mount", mnt, "--shared-dir", shared_dir, *args]


@contextlib.contextmanager
def mounted_subprocess(shared_dir, mountpoint=None, *args, timeout=20.0):
    """Run `python -m pyvirtiofsd --mount MNT --shared-dir DIR [args]`; yield
    (mount point, Popen); then SIGTERM it (it must unmount itself), kill it
    if it does not exit, and unmount whatever is left."""
    require_fuse()
    with _mountpoint(mountpoint) as mnt:
        proc = subprocess.Popen(pyvirtiofsd_cmd(shared_dir, mnt, *args), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": REPO})
        try:
            wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, timeout,
                       f"pyvirtiofsd to mount {mnt}")
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise RuntimeError(f"pyvirtiofsd exited with {proc.returncode} before mounting:\n{err}")
            os.stat(mnt)
            yield mnt, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.communicate()
            force_unmount(mnt)


# -- a tiny server that knows nothing but an empty root directory ----------------------
class TinyServer:
    """Answers INIT, GETATTR/STATFS/ACCESS, LOOKUP (ENOENT), OPENDIR/READDIR
    (empty)/RELEASEDIR of the root only: enough to test the transport without
    any VFS. LOOKUP of b"block" waits on `gate` (an Event) first, to hold a
    request in flight."""

    def __init__(self):
        self.seen = []
        self.gate = threading.Event()
        self.gate.set()
        self.in_lookup = threading.Event()

    def handle(self, reader, writer):
        length, opcode, unique, nodeid, *_ = reader.read_struct(abi.IN_HEADER)
        body = reader.read(length - abi.IN_HEADER.size)
        self.seen.append(opcode)
        if opcode in (abi.FORGET, abi.BATCH_FORGET, abi.INTERRUPT):
            return 0
        err, out = 0, b""
        if opcode == abi.INIT:
            major, minor, readahead, flags = abi.INIT_IN_COMPAT.unpack_from(body)
            out = abi.INIT_OUT.pack(7, abi.KERNEL_MINOR_VERSION, readahead, 0, 16, 12,
                                    fusedev.MAX_WRITE, 1, fusedev.MAX_WRITE // 4096, 0, 0)
        elif opcode == abi.GETATTR:
            if nodeid != abi.ROOT_ID:
                err = errno.ENOENT
            else:
                now = int(time.time())
                out = abi.ATTR_OUT.pack(0, 0, 0, 1, 0, 0, now, now, now, 0, 0, 0,
                                        stat.S_IFDIR | 0o755, 2, 0, 0, 0, 4096, 0)
        elif opcode == abi.LOOKUP:
            if body.rstrip(b"\0") == b"block":
                self.in_lookup.set()
                self.gate.wait(30)
            err = errno.ENOENT
        elif opcode == abi.STATFS:
            out = abi.KSTATFS.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0)
        elif opcode == abi.OPENDIR:
            out = abi.OPEN_OUT.pack(1, 0, 0)
        elif opcode == abi.READDIR:
            fh, offset, size = abi.READ_IN.unpack_from(body)[:3]
            if offset == 0:
                for i, name in enumerate((b".", b"..")):
                    rec = abi.dirent_size(len(name))
                    out += abi.DIRENT.pack(1, i + 1, len(name), 4) + name + bytes(rec - 24 - len(name))
            if offset == 1:
                out = abi.DIRENT.pack(1, 2, 2, 4) + b".." + bytes(6)
        elif opcode in (abi.RELEASEDIR, abi.ACCESS, abi.FLUSH, abi.RELEASE, abi.DESTROY):
            pass
        else:
            err = errno.ENOSYS
        if err:
            out = b""
        writer.write(abi.OUT_HEADER.pack(16 + len(out), -err, unique) + out)
        return 16 + len(out)
