"""Nothing a guest sends reaches the host outside --shared-dir: symlinks in
the share are never followed on the host, odd names are refused, special
files are not opened, and a directory swapped for a symlink mid-flight
does not redirect creates."""
import errno
import os
import stat
import threading

import pytest

from fuse_client import FuseError, errno_of, serve
from pyvirtiofsd.protocol import abi
from pyvirtiofsd.vfs.backend import ROOT_CTX
from pyvirtiofsd.vfs.backends.host import HostBackend
from pyvirtiofsd.vfs.vfs import Vfs

ROOT = abi.ROOT_ID


@pytest.fixture
def dirs(tmp_path):
    share, outside = tmp_path / "share", tmp_path / "outside"
    share.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    os.setxattr(outside / "secret", "user.mark", b"outside")
    return share, outside


@pytest.fixture
def fc(dirs):
    c = serve(HostBackend(str(dirs[0])))
    yield c
    c.destroy()             # as an unmount: the backend closes what it held (hundreds of fds)


def snapshot(path):
    return sorted((p, os.lstat(os.path.join(p, n)).st_mtime_ns) for p, ds, fs in os.walk(path) for n in ds + fs)


def test_a_directory_handle_is_refused_for_a_symlink(dirs):
    share, outside = dirs
    os.symlink(outside, share / "dirlink")
    c = serve(HostBackend(str(share)), opendir=True)
    assert errno_of(c.opendir, c.lookup(ROOT, b"dirlink").nodeid) == errno.ENOTDIR


def test_symlinks_pointing_outside_are_never_followed(fc, dirs):
    share, outside = dirs
    os.symlink(outside, share / "dirlink")
    os.symlink(outside / "secret", share / "filelink")
    os.symlink("/etc/passwd", share / "etc")
    before = snapshot(outside)
    for name in (b"dirlink", b"filelink", b"etc"):
        e = fc.lookup(ROOT, name)
        assert stat.S_ISLNK(e.attr.mode)
        assert e.attr.ino == os.lstat(share / name.decode()).st_ino
        assert errno_of(fc.open, e.nodeid, os.O_RDONLY) == errno.ELOOP
        assert errno_of(fc.open, e.nodeid, os.O_WRONLY | os.O_TRUNC) == errno.ELOOP
        assert errno_of(fc.readdir, e.nodeid, 0) == errno.ENOTDIR                 # (no handles at cache=auto)
        assert errno_of(fc.readdir, e.nodeid, 0, plus=True) == errno.ENOTDIR
        assert errno_of(fc.getxattr, e.nodeid, b"user.mark") == errno.ENODATA
        assert errno_of(fc.setattr, e.nodeid, mode=0o777) == errno.EOPNOTSUPP
        assert errno_of(fc.setattr, e.nodeid, size=0) == errno.EINVAL
        assert errno_of(fc.lookup, e.nodeid, b"secret") == errno.ENOTDIR
        assert errno_of(fc.mkdir, e.nodeid, b"x") == errno.ENOTDIR
        assert errno_of(fc.create, e.nodeid, b"x") == errno.ENOTDIR
        assert errno_of(fc.mknod, e.nodeid, b"x", stat.S_IFIFO | 0o644) == errno.ENOTDIR
        fc.setattr(e.nodeid, uid=1000, mtime=5 * 10**9)      # acts on the link itself
        assert os.lstat(share / name.decode()).st_uid == 1000
    assert fc.readlink(fc.lookup(ROOT, b"etc").nodeid) == b"/etc/passwd"
    hard = fc.link(fc.lookup(ROOT, b"filelink").nodeid, ROOT, b"hard")  # links the link, not its target
    assert stat.S_ISLNK(hard.attr.mode) and os.readlink(share / "hard") == str(outside / "secret")
    assert snapshot(outside) == before
    assert (outside / "secret").read_bytes() == b"secret" and os.stat(outside / "secret").st_uid == 0
    assert os.stat("/etc/passwd").st_uid == 0


@pytest.mark.parametrize("name", [b"..", b".", b"../outside", b"a/b", b"/etc", b""])
def test_names_that_are_not_one_component_are_refused(fc, dirs, name):
    share, outside = dirs
    body = name + b"\0"
    for op in (abi.LOOKUP, abi.UNLINK, abi.RMDIR):
        assert fc.request(op, ROOT, body)[0] == errno.EINVAL
    assert fc.request(abi.MKDIR, ROOT, abi.MKDIR_IN.pack(0o755, 0) + body)[0] == errno.EINVAL
    assert fc.request(abi.SYMLINK, ROOT, body + b"/etc\0")[0] == errno.EINVAL
    (share / "ok").write_bytes(b"")
    assert errno_of(fc.rename, ROOT, b"ok", ROOT, name) == errno.EINVAL
    assert errno_of(fc.rename, ROOT, name, ROOT, b"ok") == errno.EINVAL
    assert os.listdir(share) == ["ok"] and os.listdir(outside) == ["secret"]


def test_a_nul_byte_inside_a_name_or_target_is_refused(dirs):
    """The wire cuts names at their NUL, so these reach the layers only from
    code that calls them directly: each layer refuses them itself."""
    share, _ = dirs
    (share / "a").write_bytes(b"")
    backend = HostBackend(str(share))
    vfs = Vfs(backend)

    def refused(fn, *args):
        with pytest.raises(OSError) as e:
            fn(*args)
        return e.value.errno == errno.EINVAL

    for name in (b"a\0b", b"\0", b"a\0", b"a/\0"):
        assert refused(vfs.lookup, ROOT_CTX, ROOT, name)
        assert refused(vfs.mkdir, ROOT_CTX, ROOT, name, 0o755)
        assert refused(backend.lookup, ROOT_CTX, backend.root(), name)
    assert refused(vfs.symlink, ROOT_CTX, ROOT, b"l", b"/etc\0passwd")
    assert refused(vfs.getxattr, ROOT_CTX, ROOT, b"user.a\0b")
    assert os.listdir(share) == ["a"]


def test_special_files_are_not_opened_on_the_host(fc, dirs):
    share, _ = dirs
    os.mkfifo(share / "fifo")
    os.mknod(share / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for name in (b"fifo", b"null"):
        e = fc.lookup(ROOT, name)
        assert errno_of(fc.open, e.nodeid, os.O_RDONLY) == errno.ENXIO   # and no hang on the fifo
    assert errno_of(fc.mknod, ROOT, b"disk", stat.S_IFBLK | 0o600, 8 << 8) == errno.EPERM
    assert errno_of(fc.mknod, ROOT, b"mem", stat.S_IFCHR | 0o600, 1 << 8 | 1) == errno.EPERM
    wh = fc.mknod(ROOT, b"whiteout", stat.S_IFCHR | 0o000, 0)               # overlay whiteout is fine
    assert stat.S_ISCHR(wh.attr.mode) and os.lstat(share / "whiteout").st_rdev == 0


def test_directory_swapped_for_symlink_does_not_redirect_creates(fc, dirs):
    """A directory handle names an inode, not a path: whatever happens to the
    path on the host, creates through the handle land in that inode."""
    share, outside = dirs
    (share / "d").mkdir()
    d = fc.lookup(ROOT, b"d")
    stop = threading.Event()

    def swapper():
        while not stop.is_set():
            try:
                os.rename(share / "d", share / "d.moved")
                os.symlink(outside, share / "d")
                os.unlink(share / "d")
                os.rename(share / "d.moved", share / "d")
            except OSError:
                pass
    t = threading.Thread(target=swapper)
    t.start()
    try:
        for i in range(300):
            name = f"f{i}".encode()
            try:
                e, fh = fc.create(d.nodeid, name)
                fc.release(e.nodeid, fh)
                fc.mkdir(d.nodeid, b"sub%d" % i)
                fc.lookup(ROOT, b"d")                # resolves whatever is there now
            except FuseError:
                pass
    finally:
        stop.set()
        t.join()
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    inside = os.listdir(share / "d") if (share / "d").is_dir() else os.listdir(share / "d.moved")
    assert len(inside) == 600


def test_rmdir_of_a_swapped_path_acts_on_names_in_the_held_parent(fc, dirs):
    share, outside = dirs
    (share / "p").mkdir()
    (outside / "victim").mkdir()
    p = fc.lookup(ROOT, b"p")
    os.rename(share / "p", share / "p2")
    os.symlink(outside, share / "p")
    assert errno_of(fc.rmdir, p.nodeid, b"victim") == errno.ENOENT
    assert errno_of(fc.unlink, p.nodeid, b"secret") == errno.ENOENT
    assert (outside / "victim").is_dir() and (outside / "secret").exists()
