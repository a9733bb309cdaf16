"""fusedev: the FUSE server through /dev/fuse on a host mount point.

The transport is tested with TinyServer (an empty root, no VFS) so that it
stands alone; the last tests run the real CLI over a host directory."""
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import fusemount
from fusemount import TinyServer, is_mounted, mounted, our_mounts, wait_until
from pyvirtiofsd import syscalls
from pyvirtiofsd.device import fusedev
from pyvirtiofsd.protocol import abi

pytestmark = pytest.mark.timeout(60)
fusemount.require_fuse()


@pytest.fixture(autouse=True)
def no_mount_left_behind():
    before = set(our_mounts())
    yield
    left = set(our_mounts()) - before
    for mp in left:
        fusemount.force_unmount(mp)
    assert not left, f"mounts left behind: {left}"


def test_mount_serve_unmount(tmp_path):
    srv = TinyServer()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted(srv, str(mnt)) as m:
        session = mounted.last_session
        assert is_mounted(m)
        st = os.stat(m)
        assert st.st_ino == abi.ROOT_ID and oct(st.st_mode) == oct(0o40755)
        assert os.listdir(m) == []
        with pytest.raises(FileNotFoundError):
            os.stat(os.path.join(m, "nothing"))
        assert os.statvfs(m).f_namemax == 255
        assert srv.seen[0] == abi.INIT
        assert all(t.is_alive() for t in session.workers) and len(session.workers) == 2
    assert not is_mounted(str(mnt))
    assert not any(t.is_alive() for t in session.workers)
    assert session.fd == -1
    # the mount point is an ordinary empty directory again
    assert os.listdir(mnt) == []


def test_mountinfo_shows_type_and_source(tmp_path):
    with mounted(TinyServer()) as m:
        (entry,) = [x for x in fusemount.mounts() if x[0] == m]
        assert entry[1] in ("fuse.pyvirtiofsd", "fuse") and entry[2] == "pyvirtiofsd"
        with open("/proc/self/mountinfo") as f:
            line = next(line for line in f if f" {m} " in line)
        for opt in ("nosuid", "nodev", "default_permissions", "allow_other"):
            assert opt in line, line


def test_many_threads_many_requests():
    srv = TinyServer()
    with mounted(srv, threads=4) as m:
        errors = []

        def hammer():
            try:
                for i in range(200):
                    os.stat(m)
                    try:
                        os.lstat(os.path.join(m, f"n{i}"))
                    except FileNotFoundError:
                        pass
            except Exception as e:      # pragma: no cover - reported below
                errors.append(e)

        ts = [threading.Thread(target=hammer) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert not errors
        assert srv.seen.count(abi.LOOKUP) >= 8 * 200
        assert len(mounted.last_session.workers) == 4


def test_busy_mount_is_detached_and_leftover_fds_get_enotconn():
    """A test that fails with a file still open must not leave a mount, and a
    request after the unmount must fail, not hang."""
    with mounted(TinyServer()) as m:
        fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
        cwd_holder = os.open(m, os.O_PATH)
    try:
        assert not is_mounted(m)
        with pytest.raises(OSError) as e:
            os.fstat(fd)
        assert e.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as e:
            os.listdir(fd)
        assert e.value.errno == errno.ENOTCONN
    finally:
        os.close(fd)
        os.close(cwd_holder)


def test_serve_returns_when_unmounted_from_outside(tmp_path):
    ready = threading.Event()
    result = []
    mnt = str(tmp_path)
    t = threading.Thread(target=lambda: result.append(
        fusedev.serve(TinyServer(), mnt, threads=3, ready=ready)), daemon=True)
    t.start()
    try:
        assert ready.wait(10)
        assert is_mounted(mnt)
        assert os.stat(mnt).st_ino == abi.ROOT_ID
        syscalls.umount2(mnt, 0)           # like `umount` or `fusermount -u`
        t.join(10)
        assert not t.is_alive() and result == [0]
    finally:
        fusemount.force_unmount(mnt)
    assert not is_mounted(mnt)


def test_serve_calls_a_ready_callable(tmp_path):
    calls = []
    mnt = str(tmp_path)

    def ready():
        calls.append(is_mounted(mnt))
        threading.Thread(target=syscalls.umount2, args=(mnt, 0)).start()

    assert fusedev.serve(TinyServer(), mnt, ready=ready) == 0
    assert calls == [True] and not is_mounted(mnt)


def test_mount_errors_raise_and_leak_nothing(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    nfds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(NotADirectoryError):
        fusedev.serve(TinyServer(), str(f))
    with pytest.raises(FileNotFoundError):
        fusedev.serve(TinyServer(), str(tmp_path / "missing"))
    assert len(os.listdir("/proc/self/fd")) == nfds


def test_interrupted_request_does_not_break_the_session():
    """A process killed while its request is in the server: the kernel sends
    INTERRUPT (no reply) and waits for our answer; the session goes on."""
    srv = TinyServer()
    srv.gate.clear()
    with mounted(srv, threads=2) as m:
        child = subprocess.Popen([sys.executable, "-c", f"import os; os.stat({m + '/block'!r})"])
        try:
            assert srv.in_lookup.wait(10)
            child.send_signal(signal.SIGKILL)
            wait_until(lambda: abi.INTERRUPT in srv.seen, 5, "INTERRUPT")
            assert os.stat(m).st_ino == 1        # the other worker still serves
        finally:
            srv.gate.set()
            child.wait(10)
        assert child.returncode == -signal.SIGKILL
        assert os.listdir(m) == []
        assert all(t.is_alive() for t in mounted.last_session.workers)


SERVE_SCRIPT = textwrap.dedent("""
    import logging, sys
    sys.path.insert(0, {tests!r})
    from fusemount import TinyServer
    from pyvirtiofsd.device import fusedev
    logging.basicConfig(level=logging.INFO)
    sys.exit(fusedev.serve(TinyServer(), sys.argv[1], ready=lambda: print("ready", flush=True)))
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(tmp_path, sig):
    mnt = str(tmp_path)
    script = SERVE_SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.Popen([sys.executable, "-c", script, mnt], cwd=fusemount.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with proc:
        try:
            assert proc.stdout.readline() == "ready\n"
            assert is_mounted(mnt) and os.stat(mnt).st_ino == 1
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err
            assert "unmounted" in err
            assert not is_mounted(mnt)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            fusemount.force_unmount(mnt)


def test_killed_daemon_leaves_enotconn_not_a_hang(tmp_path):
    """SIGKILL: no cleanup at all; the kernel aborts the connection when the
    /dev/fuse fd goes away, so the mount answers ENOTCONN until unmounted."""
    mnt = str(tmp_path)
    script = SERVE_SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.Popen([sys.executable, "-c", script, mnt], cwd=fusemount.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    with proc:
        try:
            assert proc.stdout.readline() == "ready\n"
            proc.kill()
            proc.wait(10)
            with pytest.raises(OSError) as e:
                os.stat(mnt)
            assert e.value.errno == errno.ENOTCONN
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            fusemount.force_unmount(mnt)
    assert not is_mounted(mnt)


# -- the real thing: the CLI over a host directory ---------------------------------------
def test_cli_mount_serves_a_host_dir_and_sigterm_unmounts(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello").write_bytes(b"world")
    with fusemount.mounted_subprocess(str(share)) as (mnt, proc):
        assert sorted(os.listdir(mnt)) == ["hello"]
        with open(os.path.join(mnt, "hello"), "rb") as f:
            assert f.read() == b"world"
        with open(os.path.join(mnt, "new"), "wb") as f:
            f.write(b"x" * 100000)
        assert (share / "new").stat().st_size == 100000
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        assert proc.returncode == 0
        assert not is_mounted(mnt)


def test_in_process_mount_of_host_backend(tmp_path):
    from pyvirtiofsd.vfs.backends.host import HostBackend
    share = tmp_path / "share"
    share.mkdir()
    with mounted(HostBackend(str(share))) as m:
        data = os.urandom(3 << 20)              # several max_write-sized WRITEs
        with open(os.path.join(m, "big"), "wb") as f:
            f.write(data)
        assert (share / "big").read_bytes() == data
        with open(os.path.join(m, "big"), "rb") as f:
            assert f.read() == data
        os.mkdir(os.path.join(m, "d"))
        assert sorted(os.listdir(m)) == ["big", "d"]
        before = time.monotonic()
        for i in range(100):
            os.stat(os.path.join(m, "big"))
        assert time.monotonic() - before < 10


def counting_server(share, cache, ops):
    """A FuseServer over the host directory share that counts the requests it
    serves of each op in ops (names without "op_") -> (server, counts)."""
    from pyvirtiofsd.protocol.server import FuseServer
    from pyvirtiofsd.vfs.backends.host import HostBackend
    from pyvirtiofsd.vfs.vfs import Vfs
    calls = dict.fromkeys(ops, 0)

    def counted(op):
        def handler(self, *a):
            calls[op] += 1
            return getattr(FuseServer, "op_" + op)(self, *a)
        return handler
    counting = type("Counting", (FuseServer,), {"op_" + op: counted(op) for op in ops})
    return counting(Vfs(HostBackend(str(share)), cache=cache)), calls


@pytest.mark.parametrize("cache, plus", [("never", False), ("auto", True)])
def test_the_kernel_lists_with_readdirplus_only_where_offered(tmp_path, cache, plus):
    """The host kernel, told at INIT, lists with READDIR only at
    cache=never and with READDIRPLUS at cache=auto, and either way lists
    what the host has."""
    share = tmp_path / "share"
    share.mkdir()
    for i in range(50):
        (share / f"f{i}").write_bytes(b"x" * i)
    (share / "d").mkdir()
    server, calls = counting_server(share, cache, ("readdir", "readdirplus"))
    with mounted(server) as m:
        listed = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(m)}
    assert sorted(listed) == sorted(os.listdir(share))
    for name, st in listed.items():
        host = os.lstat(share / name)
        assert (st.st_ino, st.st_mode, st.st_size) == (host.st_ino, host.st_mode, host.st_size)
    if plus:        # (with READDIRPLUS_AUTO the kernel may still read on with READDIR)
        assert calls["readdirplus"] > 0, calls
    else:
        assert calls["readdirplus"] == 0 and calls["readdir"] > 0, calls


def test_the_kernel_lists_without_directory_handles_at_cache_auto(tmp_path):
    """At cache=auto the first OPENDIR fails with ENOSYS and the host kernel
    sends no other OPENDIR or RELEASEDIR, lists with handle 0 and caches what
    it read: a name made through the mount shows at once, one made on the
    host once the directory's attributes expire (1 s) and the kernel sees
    its mtime changed; a tree is listed and removed through the mount."""
    import shutil
    share = tmp_path / "share"
    share.mkdir()
    for i in range(1500):
        (share / f"file-with-a-longer-name-{i}").write_bytes(b"")
    for d in range(20):
        for f in range(30):
            os.makedirs(share / "tree" / f"d{d}" / f"e{f % 3}", exist_ok=True)
            (share / "tree" / f"d{d}" / f"e{f % 3}" / f"f{f}").write_bytes(b"y")
    server, calls = counting_server(share, "auto", ("opendir", "releasedir", "readdir", "readdirplus"))
    with mounted(server) as m:
        listings = []
        for _ in range(3):
            assert sorted(os.listdir(m)) == sorted(os.listdir(share))
            listings.append(calls["readdir"] + calls["readdirplus"])
        assert listings[0] > 1 and listings == listings[:1] * 3      # read once, then from its cache
        open(os.path.join(m, "made-in-the-mount"), "w").close()
        assert "made-in-the-mount" in os.listdir(m)
        (share / "made-on-the-host").write_bytes(b"")
        time.sleep(1.2)
        assert "made-on-the-host" in os.listdir(m)
        walked = sorted(os.path.relpath(os.path.join(p, n), m) for p, ds, fs in os.walk(m) for n in ds + fs)
        assert walked == sorted(os.path.relpath(os.path.join(p, n), share)
                                for p, ds, fs in os.walk(share) for n in ds + fs)
        shutil.rmtree(os.path.join(m, "tree"))
        assert not (share / "tree").exists()
    assert calls["opendir"] == 1 and calls["releasedir"] == 0, calls


def test_start_after_close_starts_no_worker(tmp_path):
    """close() may come first (the mount left at once, a signal): start()
    then must not run workers on the closed connection (they died on
    poll.register(-1) before)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    s = fusedev.FuseSession(TinyServer(), str(mnt), threads=2)
    s.mount()
    s.close()
    s.start()
    assert s.workers == [] and not is_mounted(str(mnt))
