"""Overlay features beyond the differential corpus: interop of the upper
layer with kernel overlayfs both ways, memory layers, userxattr, metacopy,
hard links across copy-up, inode numbers, the negative lookup cache."""
import contextlib
import errno
import os
import shutil
import stat
import tempfile

import pytest

import fusemount
from test_differential_host import R, run_sequence, snapshot
from test_overlay_differential import CORPUS, compare_overlay, kernel_overlay, our_overlay
from test_overlay_trees import make_lowers
from pyvirtiofsd.vfs.backends.memory import MemoryBackend
from pyvirtiofsd.vfs.overlay import OverlayBackend

fusemount.require_fuse()
ALL_STEPS = [s for name in sorted(CORPUS) for s in CORPUS[name]]


@contextlib.contextmanager
def serving(backend):
    """Mount backend; destroy it afterwards (its host descriptors)."""
    try:
        with fusemount.mounted(backend, cache="never") as mnt:
            yield mnt
    finally:
        backend.destroy()


@pytest.fixture
def base():
    d = tempfile.mkdtemp(prefix="pyvfs-ovlf-")
    os.chmod(d, 0o755)
    old = os.umask(0o022)
    try:
        yield d
    finally:
        os.umask(old)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def lowers(base):
    return make_lowers(base)


@pytest.mark.parametrize("name", ["remove_and_recreate", "rename_files_and_dirs", "copy_up_metadata"])
def test_our_upper_mounts_with_kernel_overlayfs(lowers, base, name):
    with our_overlay(lowers, base) as (mnt, upper):
        run_sequence(mnt, CORPUS[name])
        ours = snapshot(mnt)
    work = os.path.join(base, "W2")          # our work dir is the kernel's layout
    kmnt = os.path.join(base, "K")
    os.mkdir(kmnt)
    from pyvirtiofsd import syscalls
    syscalls.mount("overlay", kmnt, "overlay", 0,
                   f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},index=off")
    try:
        assert snapshot(kmnt) == ours
    finally:
        syscalls.umount2(kmnt, syscalls.MNT_DETACH)


@pytest.mark.parametrize("name", ["remove_and_recreate", "rename_files_and_dirs", "links_and_new_objects"])
def test_kernel_upper_served_by_us(lowers, base, name):
    with kernel_overlay(lowers, base) as (kmnt, kupper):
        run_sequence(kmnt, CORPUS[name])
        theirs = snapshot(kmnt)
    from pyvirtiofsd.vfs.overlay import build_overlay
    backend = build_overlay(kupper, lowers, workdir=os.path.join(base, "W1"))
    with serving(backend) as mnt:
        assert snapshot(mnt) == theirs


def _no_dir_sizes(snap):
    tree, links = snap
    for info in tree.values():
        if "list" in info:
            s = info["stat"]
            info["stat"] = s[:4] + (None,) + s[5:]
    return tree, links


def test_memory_layers_match_kernel(lowers, base):
    """Memory upper over memory lowers (prefilled from the same trees)."""
    steps = [s for s in ALL_STEPS if s[1][0] != "lstat"]
    with kernel_overlay(lowers, base) as (kmnt, _):
        want = run_sequence(kmnt, steps)
        theirs = _no_dir_sizes(snapshot(kmnt))
    backend = OverlayBackend(MemoryBackend(), [MemoryBackend(prefill=d) for d in lowers])
    with serving(backend) as mnt:
        os.chmod(mnt, 0o755)
        assert run_sequence(mnt, steps) == want
        assert _no_dir_sizes(snapshot(mnt)) == theirs


def test_host_upper_over_memory_and_host_lowers(lowers, base):
    upper = os.path.join(base, "U")
    os.mkdir(upper)
    from pyvirtiofsd.vfs.backends.host import HostBackend
    backend = OverlayBackend(HostBackend(upper), [MemoryBackend(prefill=lowers[0]), HostBackend(lowers[1])],
                             workdir=os.path.join(base, "W"))
    with kernel_overlay(lowers, base) as (kmnt, _):
        theirs = snapshot(kmnt)
    with serving(backend) as mnt:
        assert _no_dir_sizes(snapshot(mnt)) == _no_dir_sizes(theirs)


def test_userxattr(base):
    lowers = make_lowers(base, opaque_xattr="user.overlay.opaque")
    compare_overlay(lowers, CORPUS["remove_and_recreate"] + CORPUS["lookup_whiteout_opaque_types"],
                    "userxattr", userxattr=True)


def test_metacopy(lowers):
    steps = [R("chmod", "f", 0o600), R("chown", "big", 1000, 0), R("read_file", "big"), R("lstat", "big"),
             R("setxattr", "d/f", "user.m", b"1", 0), R("read_file", "d/f"),
             R("open", "big", os.O_WRONLY, 0, 0), R("pwrite", 0, b"w", 10), R("close", 0),
             R("read_file", "big"), R("truncate", "x", 2), R("read_file", "x")]
    compare_overlay(lowers, steps, "metacopy=on,redirect_dir=on", metacopy=True, redirect_dir=True)


def test_hard_links_stay_one_inode_after_copy_up(base):
    lower, upper = os.path.join(base, "L"), os.path.join(base, "U")
    os.mkdir(lower)
    os.mkdir(upper)
    with open(os.path.join(lower, "a"), "wb") as f:
        f.write(b"old")
    os.link(os.path.join(lower, "a"), os.path.join(lower, "b"))
    from pyvirtiofsd.vfs.overlay import build_overlay
    with serving(build_overlay(upper, [lower], workdir=os.path.join(base, "W"))) as mnt:
        a, b = os.path.join(mnt, "a"), os.path.join(mnt, "b")
        ino, dev = os.lstat(a).st_ino, os.lstat(a).st_dev
        assert os.lstat(b).st_ino == ino
        with open(a, "ab") as f:
            f.write(b"new")
        assert os.lstat(a).st_ino == ino and os.lstat(a).st_dev == dev   # xino: stable across copy-up
        with open(b, "rb") as f:
            assert f.read() == b"oldnew"                                  # one inode, as with index=on
        os.rename(b, os.path.join(mnt, "c"))                             # linked up, not copied
        assert os.lstat(os.path.join(upper, "c")).st_ino == os.lstat(os.path.join(upper, "a")).st_ino
        assert os.lstat(mnt).st_dev == dev


def test_negative_lookups_are_cached_per_layer(base):
    lowers = [os.path.join(base, f"L{i}") for i in range(4)]
    for d in lowers:
        os.mkdir(d)
    upper = os.path.join(base, "U")
    os.mkdir(upper)
    from pyvirtiofsd.vfs.overlay import build_overlay
    from pyvirtiofsd.vfs.backend import ROOT_CTX
    ovl = build_overlay(upper, lowers, workdir=os.path.join(base, "W"))
    root = ovl.root()
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            ovl.lookup(ROOT_CTX, root, b"absent")
    assert sum(layer.lookups for layer in ovl.lowers) == 4       # each layer asked once
    assert sum(layer.neg_hits for layer in ovl.lowers) == 8
    # created through the overlay: found in the upper, no stale negative answer
    h, _, f, _ = ovl.create(ROOT_CTX, root, b"absent", 0o644, os.O_WRONLY | os.O_CREAT)
    ovl.release(ROOT_CTX, f)
    h2, attr = ovl.lookup(ROOT_CTX, root, b"absent")
    assert stat.S_ISREG(attr.st_mode)
    for layer in ovl.lowers:
        layer.invalidate()
    ovl.unlink(ROOT_CTX, root, b"absent")
    with pytest.raises(FileNotFoundError):
        ovl.lookup(ROOT_CTX, root, b"absent")
    ovl.forget(h)
    ovl.forget(h2)
    ovl.destroy()


def test_no_tmpfile_on_the_overlay(base):
    """O_TMPFILE is refused (EOPNOTSUPP; the kernel's overlayfs has it since 6.6)."""
    from pyvirtiofsd.vfs.overlay import build_overlay
    from pyvirtiofsd.vfs.backend import ROOT_CTX
    upper = os.path.join(base, "U")
    os.mkdir(upper)
    ovl = build_overlay(upper, [], workdir=os.path.join(base, "W"))
    with pytest.raises(OSError) as e:
        ovl.tmpfile(ROOT_CTX, ovl.root(), 0o600, os.O_RDWR)
    assert e.value.errno == errno.EOPNOTSUPP
    ovl.destroy()
