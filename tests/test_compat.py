"""Pins for the Linux behaviours we knowingly differ on (docs/compat.md):
each test shows the difference as it is, so a change is a decision."""
import errno
import fcntl
import os
import struct

import pytest

from fuse_client import FuseError, serve
from pyvirtiofsd.protocol import abi
from pyvirtiofsd.vfs.backends.host import HostBackend
from pyvirtiofsd.vfs.backends.memory import MemoryBackend

ROOT = abi.ROOT_ID


client = serve


def test_locks_are_local_to_the_daemon(tmp_path):
    """A lock a host process holds on the backing file does not block a guest."""
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDWR)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
    c = client(HostBackend(str(tmp_path)))
    e = c.lookup(ROOT, b"f")
    fh = c.open(e.nodeid)
    c.setlk(e.nodeid, fh, 1, 0, 10, fcntl.F_WRLCK)         # granted all the same
    os.close(fd)


def test_supplementary_groups_do_not_reach_the_host(tmp_path):
    """FUSE carries one gid: creating through a supplementary group's write
    permission is refused by the host check (EACCES)."""
    d = tmp_path / "team"
    d.mkdir()
    os.chown(d, 0, 2000)
    os.chmod(d, 0o770)
    c = client(HostBackend(str(tmp_path)))
    team = c.lookup(ROOT, b"team")
    c.uid, c.gid = 1000, 1000                                # a member of 2000 in the guest, say
    with pytest.raises(FuseError) as e:
        c.mkdir(team.nodeid, b"x")
    assert e.value.errno == errno.EACCES
    c.gid = 2000                                             # as primary group it works
    assert c.mkdir(team.nodeid, b"x").attr.gid == 2000


def test_host_readdir_is_a_snapshot_until_rewind(tmp_path):
    """With directory handles (cache=never, --opendir): entries added after
    opendir show up after a rewind (offset 0)."""
    (tmp_path / "a").write_bytes(b"")
    c = client(HostBackend(str(tmp_path)), opendir=True)
    fh = c.opendir(ROOT)
    first = [e[0] for e in c.readdir(ROOT, fh, 0)]
    (tmp_path / "b").write_bytes(b"")
    later = [e[0] for e in c.readdir(ROOT, fh, len(first))]
    assert b"b" not in first and later == []
    assert b"b" in [e[0] for e in c.readdir(ROOT, fh, 0)]


def test_memory_backend_reads_do_not_touch_atime():
    """Like mounting with noatime: tmpfs (relatime) would move atime on the
    first read after a write."""
    c = client(MemoryBackend())
    e, fh = c.create(ROOT, b"f")
    c.write(e.nodeid, fh, 0, b"data")
    c.setattr(e.nodeid, atime=1_000_000_000_000_000_000)
    c.read(e.nodeid, fh, 0, 4)
    assert c.getattr(e.nodeid).atime_ns == 1_000_000_000_000_000_000


def test_host_inode_numbers_are_the_host_ones(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    c = client(HostBackend(str(tmp_path)))
    assert c.lookup(ROOT, b"f").attr.ino == os.stat(tmp_path / "f").st_ino


def test_memory_backend_acl_xattrs_do_not_change_the_mode():
    """tmpfs folds an access ACL's owner/group-class/other entries into the
    mode bits; we store the xattr as given and leave the mode alone."""
    c = client(MemoryBackend())
    f = c.mknod(ROOT, b"f", 0o100600)
    tags = [(0x01, 0o7, 0xFFFFFFFF), (0x04, 0o7, 0xFFFFFFFF), (0x10, 0o7, 0xFFFFFFFF),
            (0x20, 0o7, 0xFFFFFFFF)]                 # USER_OBJ, GROUP_OBJ, MASK, OTHER: all rwx
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *t) for t in tags)
    c.setxattr(f.nodeid, b"system.posix_acl_access", acl)
    assert c.getxattr(f.nodeid, b"system.posix_acl_access") == acl
    assert c.getattr(f.nodeid).mode & 0o7777 == 0o600      # tmpfs would show 0o777


def test_memory_backend_statfs_without_limits_reports_one_tib():
    """tmpfs without size= reports half of RAM; with no --memory-size we
    report 1 TiB and 2^32 inodes, all free, so df in the guest shows room."""
    blocks, bfree, bavail, files, ffree, bsize, namelen, frsize = client(MemoryBackend()).statfs()
    assert blocks * bsize == 1 << 40 and bfree == bavail == blocks
    assert files == 1 << 32 and ffree == files - 1
