"""Memory backend limits and the cases the differential suites reach only
rarely: ENOSPC (bytes, inodes), EMLINK, ENAMETOOLONG, E2BIG, statfs,
whiteouts, cheap sparse files."""
import errno
import os
import stat


from fuse_client import errno_of, serve
from pyvirtiofsd.protocol import abi
from pyvirtiofsd.vfs.backends.memory import MemoryBackend

ROOT = abi.ROOT_ID


def client(**kw):
    return serve(MemoryBackend(**kw))


def test_byte_limit_gives_enospc_and_statfs_reports_it():
    c = client(max_bytes=64 * 4096)
    blocks, bfree, bavail, files, ffree, bsize, namelen, frsize = c.statfs()
    assert (blocks, bfree, bsize, namelen) == (64, 64, 4096, 255)
    e, fh = c.create(ROOT, b"f")
    assert c.write(e.nodeid, fh, 0, b"x" * (60 * 4096)) == 60 * 4096
    assert c.statfs()[1] == 4
    # as tmpfs: a write larger than the room left is short, the next one fails
    assert c.write(e.nodeid, fh, 60 * 4096, b"y" * (8 * 4096)) == 4 * 4096
    assert c.statfs()[1] == 0
    assert errno_of(c.write, e.nodeid, fh, 64 * 4096, b"y" * 4096) == errno.ENOSPC
    c.setattr(e.nodeid, size=0)                                   # freeing pages gives room back
    assert c.statfs()[1] == 64
    assert c.write(e.nodeid, fh, 0, b"z" * 4096) == 4096


def test_inode_limit_gives_enospc():
    c = client(max_inodes=4)                                      # the root is one
    for n in (b"a", b"b", b"c"):
        c.mknod(ROOT, n, stat.S_IFREG | 0o644)
    assert errno_of(c.mkdir, ROOT, b"d") == errno.ENOSPC
    assert c.statfs()[4] == 0
    c.unlink(ROOT, b"a")
    c.mkdir(ROOT, b"d")


def test_link_and_name_limits():
    c = client(link_max=3, name_max=20)
    f = c.mknod(ROOT, b"f", stat.S_IFREG | 0o644)
    c.link(f.nodeid, ROOT, b"g")
    c.link(f.nodeid, ROOT, b"h")
    assert errno_of(c.link, f.nodeid, ROOT, b"i") == errno.EMLINK
    assert errno_of(c.mknod, ROOT, b"n" * 21, stat.S_IFREG | 0o644) == errno.ENAMETOOLONG
    assert errno_of(c.lookup, ROOT, b"n" * 21) == errno.ENAMETOOLONG
    d = c.mkdir(ROOT, b"d")
    c.mkdir(d.nodeid, b"s1")                                      # d: nlink 3
    assert errno_of(c.mkdir, d.nodeid, b"s2") == errno.EMLINK


def test_xattr_limits_and_namespaces():
    c = client(xattr_size_max=100)
    f = c.mknod(ROOT, b"f", stat.S_IFREG | 0o644)
    c.setxattr(f.nodeid, b"user.ok", b"v" * 100)
    assert errno_of(c.setxattr, f.nodeid, b"user.big", b"v" * 101) == errno.E2BIG
    assert errno_of(c.setxattr, f.nodeid, b"bogus.x", b"1") == errno.EOPNOTSUPP
    assert errno_of(c.setxattr, f.nodeid, b"user.ok", b"1", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(c.setxattr, f.nodeid, b"user.no", b"1", os.XATTR_REPLACE) == errno.ENODATA
    s = c.symlink(ROOT, b"s", b"f")
    assert errno_of(c.setxattr, s.nodeid, b"user.x", b"1") == errno.EPERM
    c.setxattr(s.nodeid, b"trusted.overlay.opaque", b"y")           # root may label anything
    c.uid = 1000
    assert errno_of(c.getxattr, s.nodeid, b"trusted.overlay.opaque") == errno.ENODATA


def test_sparse_terabyte_file_costs_nothing():
    c = client()
    e, fh = c.create(ROOT, b"sparse")
    c.setattr(e.nodeid, size=1 << 40)
    c.write(e.nodeid, fh, (1 << 40) - 4096, b"end")
    a = c.getattr(e.nodeid)
    assert a.size == 1 << 40 and a.blocks == 8
    assert c.lseek(e.nodeid, fh, 0, os.SEEK_DATA) == (1 << 40) - 4096
    assert c.lseek(e.nodeid, fh, 0, os.SEEK_HOLE) == 0
    assert c.read(e.nodeid, fh, (1 << 40) - 4097, 4) == b"\0end"


def test_rename_rules_and_whiteout():
    c = client()
    d = c.mkdir(ROOT, b"d")
    sub = c.mkdir(d.nodeid, b"sub")
    assert errno_of(c.rename, ROOT, b"d", sub.nodeid, b"x") == errno.EINVAL
    f = c.mknod(ROOT, b"f", stat.S_IFREG | 0o644)
    c.rename(ROOT, b"f", d.nodeid, b"moved", abi.RENAME_WHITEOUT)
    wh = c.lookup(ROOT, b"f").attr
    assert stat.S_ISCHR(wh.mode) and wh.rdev == 0
    assert c.lookup(d.nodeid, b"moved").nodeid == f.nodeid
    assert errno_of(c.mknod, ROOT, b"null", stat.S_IFCHR | 0o666, 1 << 8 | 3) == errno.EPERM


def test_vfs_fails_early_where_a_backend_lacks_a_capability():
    from pyvirtiofsd.vfs.backend import Capabilities

    bare = MemoryBackend()
    bare.capabilities = Capabilities(hardlinks=False, symlinks=False, rename_exchange=False,
                                     rename_whiteout=False, xattrs=False)
    c = serve(bare)
    f = c.mknod(ROOT, b"f", stat.S_IFREG | 0o644)
    c.mknod(ROOT, b"g", stat.S_IFREG | 0o644)
    assert errno_of(c.link, f.nodeid, ROOT, b"h") == errno.EPERM
    assert errno_of(c.symlink, ROOT, b"s", b"f") == errno.EPERM
    assert errno_of(c.rename, ROOT, b"f", ROOT, b"g", abi.RENAME_EXCHANGE) == errno.EINVAL
    assert errno_of(c.rename, ROOT, b"f", ROOT, b"x", abi.RENAME_WHITEOUT) == errno.EINVAL
    assert errno_of(c.setxattr, f.nodeid, b"user.a", b"1") == errno.EOPNOTSUPP
    assert errno_of(c.listxattr, f.nodeid) == errno.EOPNOTSUPP
    c.rename(ROOT, b"f", ROOT, b"x")                              # plain rename still works
