"""The differential suite of test_differential_host.py, for the memory
backend: the oracle is the host kernel's tmpfs (a fresh mount), and our side
is MemoryBackend served through /dev/fuse. Same corpus, same generated
sequences, same comparison."""
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings

import fusemount
from pyvirtiofsd import syscalls
from pyvirtiofsd.vfs.backends.memory import MemoryBackend
from test_differential_host import CORPUS, SETUP, STEPS, Sides, compare

fusemount.require_fuse()


def without_zero_range(steps):
    """tmpfs has no FALLOC_FL_ZERO_RANGE; we do (docs/compat.md). Those steps
    are left out here and pinned against ext4 in test_zero_range_like_ext4."""
    return [s for s in steps if not (s[1][0] == "fallocate" and s[1][2] & syscalls.FALLOC_FL_ZERO_RANGE)]


class MemorySides(Sides):
    def cleanup(self, name):
        for base in (self.plain, self.mnt):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


@pytest.fixture(scope="module")
def sides():
    old_umask = os.umask(0o022)
    plain = tempfile.mkdtemp(prefix="pyvfs-tmpfs-")
    syscalls.mount("tmpfs", plain, "tmpfs", 0, "mode=0755")
    try:
        with fusemount.mounted(MemoryBackend(), cache="auto", threads=4) as mnt:
            os.chmod(mnt, 0o755)
            yield MemorySides(plain, None, mnt)
    finally:
        os.umask(old_umask)
        syscalls.umount2(plain, syscalls.MNT_DETACH)
        os.rmdir(plain)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_memory(sides, name):
    compare(sides, without_zero_range(CORPUS[name]))


@pytest.mark.timeout(900)
@settings(max_examples=int(os.environ.get("PYVFS_DIFF_EXAMPLES", "100")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(steps=STEPS)
def test_generated_sequences_memory(sides, steps):
    compare(sides, without_zero_range(SETUP + steps))


def test_zero_range_like_ext4(sides, tmp_path):
    """ZERO_RANGE, with and without KEEP_SIZE, as the host's disk file system does it."""
    ours = os.path.join(sides.mnt, "zr")
    theirs = str(tmp_path / "zr")
    for path in (ours, theirs):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"a" * 20000, 0)
            syscalls.fallocate(fd, syscalls.FALLOC_FL_ZERO_RANGE, 98, 5000)
            syscalls.fallocate(fd, syscalls.FALLOC_FL_ZERO_RANGE, 19000, 4000)
            syscalls.fallocate(fd, syscalls.FALLOC_FL_ZERO_RANGE | syscalls.FALLOC_FL_KEEP_SIZE, 22000, 9000)
        finally:
            os.close(fd)
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
    assert os.path.getsize(ours) == os.path.getsize(theirs) == 23000
