"""Differential tests of the overlay: kernel overlayfs is the oracle.

Each sequence of operations runs on a fresh kernel overlay (lowerdir=L1:L2,
upperdir=U1, workdir=W1) and on a fresh OverlayBackend over the same lowers
with its own upper U2, served through /dev/fuse. Per step the results
(value or errno) must agree; at the end the merged trees (test_differential_
host.snapshot) and the raw upper layers (whiteouts, opaque/redirect xattrs,
copied-up data, modes, owners, user xattrs) must agree too.
"""
import contextlib
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusemount
from test_overlay_trees import make_lowers, raw_snapshot
from pyvirtiofsd import syscalls
from pyvirtiofsd.vfs.overlay import build_overlay
from test_differential_host import EXPLICIT_NS, R, U, fmt_step, run_sequence, snapshot, _short

fusemount.require_fuse()

O = os
RW, WO, RO = O.O_RDWR, O.O_WRONLY, O.O_RDONLY
CREAT, EXCL, TRUNC, APPEND = O.O_CREAT, O.O_EXCL, O.O_TRUNC, O.O_APPEND
NOREPLACE, EXCHANGE = syscalls.RENAME_NOREPLACE, syscalls.RENAME_EXCHANGE


@pytest.fixture(scope="module")
def lowers():
    base = tempfile.mkdtemp(prefix="pyvfs-ovl-lowers-")
    os.chmod(base, 0o755)
    try:
        yield make_lowers(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def kernel_overlay(lowers, base, options=""):
    upper, work, mnt = (os.path.join(base, n) for n in ("U1", "W1", "K"))
    for d in (upper, work, mnt):
        os.mkdir(d)
    os.chmod(upper, 0o755)
    opts = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},index=off,metacopy=off"
    syscalls.mount("overlay", mnt, "overlay", 0, opts + ("," + options if options else ""))
    try:
        yield mnt, upper
    finally:
        syscalls.umount2(mnt, syscalls.MNT_DETACH)


@contextlib.contextmanager
def our_overlay(lowers, base, **opts):
    upper, work = os.path.join(base, "U2"), os.path.join(base, "W2")
    os.mkdir(upper)
    os.chmod(upper, 0o755)
    backend = build_overlay(upper, lowers, workdir=work, **opts)
    try:
        with fusemount.mounted(backend, cache="never", threads=2) as mnt:
            yield mnt, upper
    finally:
        backend.destroy()       # its host descriptors



def compare_overlay(lowers, steps, kernel_opts="", **opts):
    old_umask = os.umask(0o022)
    base = tempfile.mkdtemp(prefix="pyvfs-ovl-")
    os.chmod(base, 0o755)
    try:
        with kernel_overlay(lowers, base, kernel_opts) as (kmnt, kup), \
                our_overlay(lowers, base, **opts) as (mnt, up):
            want = run_sequence(kmnt, steps)
            got = run_sequence(mnt, steps)
            problems = [f"{fmt_step(k, s)}\n      kernel: {_short(a)}\n      ours:   {_short(b)}"
                        for k, (s, a, b) in enumerate(zip(steps, want, got)) if a != b]
            if not problems:
                problems += _diff("merged", snapshot(kmnt)[0], snapshot(mnt)[0])
                problems += _diff("upper", raw_snapshot(kup), raw_snapshot(up))
        if problems:
            seq = "\n".join(fmt_step(k, s) for k, s in enumerate(steps))
            pytest.fail("differences from kernel overlayfs:\n" + "\n".join(problems[:6])
                        + f"\nsequence:\n{seq}", pytrace=False)
    finally:
        os.umask(old_umask)
        shutil.rmtree(base, ignore_errors=True)


def _diff(what, a, b):
    return [f"  {what} {p!r}:\n      kernel: {a.get(p)}\n      ours:   {b.get(p)}"
            for p in sorted(set(a) | set(b)) if a.get(p) != b.get(p)]


# -- the fixed corpus -----------------------------------------------------------------------
CORPUS = {
    "lookup_whiteout_opaque_types": [
        R("listdir", "."), R("listdir", "d"), R("listdir", "o"), R("lstat", "d/h"), R("lstat", "o/hidden"),
        R("read_file", "o/shown"), R("lstat", "t"), R("lstat", "t/inner"), R("read_file", "d/k"),
        R("readlink", "g"), R("read_file", "g"), R("lstat", "d"), R("getxattr", "x", "user.a"),
        R("listxattr", "o"), R("read_file", "big"), U("listdir", "d"), U("read_file", "e/f"),
    ],
    "copy_up_on_write": [
        R("open", "f", WO | APPEND, 0, 0), R("write", 0, b"appended"), R("close", 0), R("read_file", "f"),
        R("open", "d/f", RW, 0, 1), R("pwrite", 1, b"X", 1), R("close", 1), R("read_file", "d/f"),
        R("open", "big", WO, 0, 2), R("pwrite", 2, b"mid", 1 << 20), R("close", 2), R("read_file", "big"),
        R("open", "d/e/f", RO | TRUNC, 0, 0), R("lstat", "d/e/f"), R("lstat", "d"),
    ],
    "copy_up_metadata": [
        R("chmod", "f", 0o600), R("chown", "d/f", 1000, 1000), R("utime", "x", EXPLICIT_NS[:2]),
        R("lstat", "x"), R("setxattr", "d/e/f", "user.n", b"v", 0), R("removexattr", "x", "user.a"),
        R("truncate", "d/k", 3), R("read_file", "d/k"), R("chown", "g", 1000, 1000, False),
        R("lstat", "g"), R("utime", "e", EXPLICIT_NS[1:3], True), U("chmod", "e/f", 0o640),
        U("setxattr", "e/f", "user.u", b"1", 0), R("lstat", "d"),
    ],
    "remove_and_recreate": [
        R("unlink", "f"), R("listdir", "."), R("open", "f", WO | CREAT | EXCL, 0o640, 0), R("write", 0, b"new"),
        R("close", 0), R("read_file", "f"), R("rmdir", "d"), R("unlink", "d/e/f"), R("rmdir", "d/e"),
        R("listdir", "d"), R("mkdir", "d/e", 0o700), R("listdir", "d/e"), R("unlink", "d/f"), R("unlink", "d/k"),
        R("rmdir", "d/e"), R("rmdir", "d"), R("mkdir", "d", 0o711), R("listdir", "d"), R("lstat", "d"),
        R("rmdir", "o"), R("unlink", "o/shown"), R("rmdir", "o"), R("unlink", "t"), R("lstat", "t"),
        R("mkdir", "t", 0o755), R("listdir", "t"), R("unlink", "g"), R("symlink", "elsewhere", "g"),
    ],
    "rename_files_and_dirs": [
        R("rename", "f", "f2"), R("read_file", "f2"), R("rename", "d/k", "e/k"), R("rename", "d", "d2"),
        R("rename", "e/f", "e/g"), R("rename2", "x", "f2", NOREPLACE), R("rename2", "x", "f2", EXCHANGE),
        R("read_file", "x"), R("listdir", "."), R("mkdir", "n", 0o755), R("rename", "n", "n2"),
        R("rename", "n2", "o"), R("rename", "n2", "t"), R("rename", "g", "d/g"), R("listdir", "d"),
        R("rename", "o/shown", "big"), R("listdir", "o"), R("rmdir", "o"), R("rename", "n2", "o"),
        R("listdir", "o"), R("rename", "e", "d/e2"),
    ],
    "links_and_new_objects": [
        R("link", "f", "f3"), R("lstat", "f"), R("lstat", "f3"), R("link", "d/f", "e/lf"),
        R("open", "e/lf", WO | APPEND, 0, 0), R("write", 0, b"!"), R("close", 0), R("read_file", "d/f"),
        R("mkfifo", "d/p", 0o640), R("symlink", "f", "d/s"), R("listdir", "d"), R("unlink", "f"),
        R("lstat", "f3"), U("open", "e/new", WO | CREAT, 0o666, 1), U("write", 1, b"u"), U("lstat", "e/new"),
        U("mkdir", "e/ud", 0o777), U("unlink", "e/f"), U("rename", "e/new", "e/new2"),
    ],
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_overlay_corpus(lowers, name):
    compare_overlay(lowers, CORPUS[name])


def test_redirect_dir_rename(lowers):
    """With redirect_dir=on a merged directory moves, leaving a whiteout and
    recording its lower path; the kernel writes the same upper."""
    steps = [R("rename", "d", "d2"), R("listdir", "d2"), R("read_file", "d2/k"), R("lstat", "d"),
             R("rename", "d2/e", "e/e2"), R("listdir", "e/e2"), R("rename", "e/e2", "d2/e"),
             R("listdir", "d2/e"), R("rename", "d2", "d"), R("listdir", "d")]
    compare_overlay(lowers, steps, "redirect_dir=on", redirect_dir=True)


# -- generated sequences ----------------------------------------------------------------------
PATHS = ["f", "g", "d", "d/f", "d/e", "d/e/f", "d/h", "d/k", "e", "e/f", "o", "o/hidden", "o/shown",
         "t", "t/inner", "x", "n"]
MODES = [0o644, 0o600, 0o755, 0o4755, 0o1777]
DATA = [b"", b"hello", b"x" * 5000]
OFFSETS = [0, 3, 4096, 70000]
FLAGS = [RO, WO, RW, WO | CREAT, RW | TRUNC, WO | APPEND, WO | CREAT | EXCL, RO | TRUNC]

path = st.sampled_from(PATHS)
slot = st.integers(0, 2)
OP = st.one_of(
    st.tuples(st.just("open"), path, st.sampled_from(FLAGS), st.sampled_from(MODES), slot),
    st.tuples(st.just("pwrite"), slot, st.sampled_from(DATA), st.sampled_from(OFFSETS)),
    st.tuples(st.just("pread"), slot, st.just(100), st.sampled_from(OFFSETS)),
    st.tuples(st.just("close"), slot),
    st.tuples(st.just("truncate"), path, st.sampled_from(OFFSETS)),
    st.tuples(st.just("mkdir"), path, st.sampled_from(MODES)),
    st.tuples(st.just("rmdir"), path),
    st.tuples(st.just("unlink"), path),
    st.tuples(st.just("link"), path, path),
    st.tuples(st.just("symlink"), st.sampled_from(["f", "d", "missing"]), path),
    st.tuples(st.just("rename"), path, path),
    st.tuples(st.just("rename2"), path, path, st.sampled_from([NOREPLACE, EXCHANGE])),
    st.tuples(st.just("chmod"), path, st.sampled_from(MODES)),
    st.tuples(st.just("chown"), path, st.sampled_from([0, 1000]), st.sampled_from([0, 1000]), st.booleans()),
    st.tuples(st.just("utime"), path, st.tuples(st.sampled_from(EXPLICIT_NS), st.sampled_from(EXPLICIT_NS)),
              st.just(False)),
    st.tuples(st.just("setxattr"), path, st.sampled_from(["user.a", "user.b"]), st.just(b"v"), st.just(0),
              st.just(False)),
    st.tuples(st.just("removexattr"), path, st.just("user.a"), st.just(False)),
    st.tuples(st.just("listdir"), st.sampled_from(PATHS + ["."])),
    st.tuples(st.just("lstat"), path),
    st.tuples(st.just("read_file"), path),
)
STEPS = st.lists(st.tuples(st.sampled_from(["root", "root", "root", "user"]), OP), min_size=1, max_size=25)


@pytest.mark.timeout(600)
@settings(max_examples=int(os.environ.get("PYVFS_OVL_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=STEPS)
def test_overlay_generated(lowers, steps):
    compare_overlay(lowers, steps)
