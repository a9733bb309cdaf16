"""FUSE requests packed as the kernel packs them, served by FuseServer over
the host backend, checked against what the host kernel says of the same
directory (os.lstat and friends)."""
import errno
import os
import stat
import struct

import pytest

from fuse_client import FuseClient, direct_transport, errno_of
from pyvirtiofsd.protocol import abi
from pyvirtiofsd.protocol.server import FuseServer, decode_dev, encode_dev
from pyvirtiofsd.vfs.backends.host import HostBackend
from pyvirtiofsd.vfs.vfs import Vfs

ROOT = abi.ROOT_ID


@pytest.fixture
def share(tmp_path):
    d = tmp_path / "share"
    d.mkdir()
    return d


@pytest.fixture
def server(share):
    return FuseServer(Vfs(HostBackend(str(share)), cache="auto"))


@pytest.fixture
def fc(server):
    c = FuseClient(direct_transport(server))
    c.init()
    return c


def assert_attr_matches(attr, path):
    st = os.lstat(path)
    assert (attr.ino, attr.mode, attr.nlink, attr.uid, attr.gid, attr.size) == \
        (st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size)
    assert attr.mtime_ns == st.st_mtime_ns


# -- session -------------------------------------------------------------------------
def test_init_negotiates_version_and_limits(server):
    c = FuseClient(direct_transport(server))
    major, minor, _, flags, _, _, max_write, time_gran, max_pages, _, flags2 = c.init()
    assert (major, minor, max_write, time_gran) == (7, abi.KERNEL_MINOR_VERSION, 1 << 20, 1)
    assert max_pages == 256 and flags & abi.DO_READDIRPLUS and flags & abi.MAX_PAGES
    assert not flags & abi.WRITEBACK_CACHE          # never accepted unasked
    limited = FuseClient(direct_transport(FuseServer(server.vfs)))
    assert limited.init(flags=abi.ASYNC_READ)[3] == abi.ASYNC_READ | abi.INIT_EXT   # never more than offered


def test_readdirplus_is_offered_except_with_cache_never(share):
    """As the C virtiofsd: with cache=never the entries of a READDIRPLUS
    expire at once, so the guest is not offered it; --readdirplus and
    --no-readdirplus decide for any mode."""
    plus = abi.DO_READDIRPLUS | abi.READDIRPLUS_AUTO
    for cache, readdirplus, want in (("never", None, 0), ("auto", None, plus), ("always", None, plus),
                                     ("never", True, plus), ("auto", False, 0)):
        s = FuseServer(Vfs(HostBackend(str(share)), cache=cache), readdirplus=readdirplus)
        assert FuseClient(direct_transport(s)).init()[3] & plus == want, (cache, readdirplus)


def test_the_request_ctx_is_what_ctx_would_build(server):
    """handle() fills a Ctx slot by slot (no __init__ frame): every slot
    must get what Ctx(uid, gid, pid, 0, unique) would give it."""
    from pyvirtiofsd.vfs.backend import Ctx
    seen = []
    real = server.vfs.getattr
    server.vfs.getattr = lambda ctx, *a: (seen.append(ctx), real(ctx, *a))[1]
    c = FuseClient(direct_transport(server), pid=4242)
    c.init()
    assert c.request(abi.GETATTR, ROOT, abi.GETATTR_IN.pack(0, 0, 0), uid=1000, gid=100)[0] == 0
    (ctx,) = seen
    want = Ctx(1000, 100, 4242, 0, c.unique)            # (c.unique: the GETATTR's)
    assert {k: getattr(ctx, k) for k in Ctx.__slots__} == {k: getattr(want, k) for k in Ctx.__slots__}


def test_requests_before_init_and_unknown_opcodes(server):
    c = FuseClient(direct_transport(server))
    assert c.request(abi.GETATTR, ROOT, abi.GETATTR_IN.pack(0, 0, 0))[0] == errno.EIO
    c.init()
    assert c.request(abi.BMAP, ROOT, bytes(16))[0] == errno.ENOSYS
    assert c.request(999, ROOT)[0] == errno.ENOSYS
    assert c.request(abi.SETUPMAPPING, ROOT, bytes(40))[0] == errno.ENOSYS


def test_destroy_forgets_everything_and_allows_reinit(fc, server, share):
    (share / "f").write_bytes(b"x")
    e = fc.lookup(ROOT, b"f")
    fh = fc.open(e.nodeid, os.O_RDONLY)
    fc.destroy()
    assert server.vfs.node_count() == 1 and server.vfs.open_count() == 0
    assert fc.request(abi.GETATTR, ROOT, abi.GETATTR_IN.pack(0, 0, 0))[0] == errno.EIO
    fc.init()
    assert fc.request(abi.READ, e.nodeid, abi.READ_IN.pack(fh, 0, 1, 0, 0, 0, 0))[0] == errno.EBADF
    assert fc.lookup(ROOT, b"f").attr.size == 1


# -- lookups and node identity -----------------------------------------------------
def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_repeated_lookups_share_one_descriptor_and_forget_closes_it(fc, server, share):
    """The host backend holds one O_PATH descriptor per inode in use: looking
    up a name whose inode it holds (again, through a hard link, after a
    create) takes a reference rather than a descriptor, and the last FORGET
    closes it, as does DESTROY."""
    (share / "f").write_bytes(b"x")
    os.link(share / "f", share / "g")
    before = _open_fds()
    e = fc.lookup(ROOT, b"f")
    assert _open_fds() == before + 1
    for _ in range(5):
        assert fc.lookup(ROOT, b"f").nodeid == e.nodeid
        assert fc.lookup(ROOT, b"g").nodeid == e.nodeid
    assert _open_fds() == before + 1
    created, fh = fc.create(ROOT, b"new")
    fc.release(created.nodeid, fh)
    assert fc.lookup(ROOT, b"new").nodeid == created.nodeid
    assert _open_fds() == before + 2
    fc.forget(e.nodeid, 10)                         # one of eleven lookups is left
    assert _open_fds() == before + 2
    assert_attr_matches(fc.getattr(e.nodeid), share / "f")
    fc.forget(e.nodeid, 1)
    assert _open_fds() == before + 1
    os.unlink(share / "f")                          # a new lookup opens it afresh
    again = fc.lookup(ROOT, b"g")
    assert again.nodeid != e.nodeid and again.attr.nlink == 1 and _open_fds() == before + 2
    fc.destroy()
    assert _open_fds() == before


def test_lookup_and_getattr_match_the_host(fc, share):
    (share / "file").write_bytes(b"hello")
    (share / "dir").mkdir(mode=0o750)
    os.symlink("/etc/passwd", share / "link")
    for name in ("file", "dir", "link"):
        e = fc.lookup(ROOT, name.encode())
        assert_attr_matches(e.attr, share / name)
        assert_attr_matches(fc.getattr(e.nodeid), share / name)
        assert e.entry_valid == 1 and e.attr_valid == 1    # cache=auto
    assert_attr_matches(fc.getattr(ROOT), share)
    assert errno_of(fc.lookup, ROOT, b"missing") == errno.ENOENT


def test_lookup_counts_follow_fuse_rules(fc, server, share):
    (share / "f").write_bytes(b"")
    a = fc.lookup(ROOT, b"f")
    b = fc.lookup(ROOT, b"f")
    assert a.nodeid == b.nodeid
    link = fc.link(a.nodeid, ROOT, b"g")                   # a hard link is the same node
    assert link.nodeid == a.nodeid and link.attr.nlink == 2
    assert server.vfs.node(a.nodeid).nlookup == 3
    fc.forget(a.nodeid, 2)
    assert server.vfs.node(a.nodeid).nlookup == 1
    fc.batch_forget([(a.nodeid, 1), (ROOT, 5), (12345, 1)])   # root and unknown ids are ignored
    with pytest.raises(OSError):
        server.vfs.node(a.nodeid)
    assert server.vfs.node_count() == 1
    again = fc.lookup(ROOT, b"f")
    assert again.nodeid != a.nodeid and again.attr.ino == a.attr.ino


def test_rename_keeps_node_and_inode(fc, share):
    (share / "a").write_bytes(b"1")
    (share / "d").mkdir()
    e = fc.lookup(ROOT, b"a")
    d = fc.lookup(ROOT, b"d")
    fc.rename(ROOT, b"a", d.nodeid, b"b")
    assert not (share / "a").exists() and (share / "d" / "b").read_bytes() == b"1"
    moved = fc.lookup(d.nodeid, b"b")
    assert moved.nodeid == e.nodeid and moved.attr.ino == e.attr.ino


# -- namespace operations --------------------------------------------------------------
def test_namespace_operations_and_errnos(fc, share):
    d = fc.mkdir(ROOT, b"d", 0o755)
    assert_attr_matches(d.attr, share / "d")
    assert errno_of(fc.mkdir, ROOT, b"d") == errno.EEXIST
    f, fh = fc.create(d.nodeid, b"f", 0o640)
    fc.release(f.nodeid, fh)
    assert stat.S_IMODE(os.stat(share / "d" / "f").st_mode) == 0o640
    assert errno_of(fc.rmdir, ROOT, b"d") == errno.ENOTEMPTY
    assert errno_of(fc.unlink, ROOT, b"d") == errno.EISDIR
    assert errno_of(fc.rmdir, d.nodeid, b"f") == errno.ENOTDIR
    assert errno_of(fc.lookup, f.nodeid, b"x") == errno.ENOTDIR
    s = fc.symlink(ROOT, b"s", b"../outside/target")
    assert fc.readlink(s.nodeid) == b"../outside/target"
    assert os.readlink(share / "s") == "../outside/target"
    p = fc.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(os.lstat(share / "fifo").st_mode) and stat.S_ISFIFO(p.attr.mode)
    fc.unlink(d.nodeid, b"f")
    fc.rmdir(ROOT, b"d")
    assert sorted(os.listdir(share)) == ["fifo", "s"]
    assert errno_of(fc.unlink, ROOT, b"nope") == errno.ENOENT


def test_rename2_flags(fc, share):
    (share / "a").write_bytes(b"A")
    (share / "b").write_bytes(b"B")
    assert errno_of(fc.rename, ROOT, b"a", ROOT, b"b", abi.RENAME_NOREPLACE) == errno.EEXIST
    fc.rename(ROOT, b"a", ROOT, b"b", abi.RENAME_EXCHANGE)
    assert (share / "a").read_bytes() == b"B" and (share / "b").read_bytes() == b"A"
    assert errno_of(fc.rename, ROOT, b"a", ROOT, b"c", abi.RENAME_EXCHANGE) == errno.ENOENT
    assert errno_of(fc.rename, ROOT, b"a", ROOT, b"c", 0x80) == errno.EINVAL
    fc.rename(ROOT, b"a", ROOT, b"c", abi.RENAME_NOREPLACE)
    assert (share / "c").read_bytes() == b"B"


def test_umask_and_caller_ownership(fc, share):
    fc.uid, fc.gid = 1234, 5678
    d = fc.mkdir(ROOT, b"mine", 0o777, umask=0o022)
    f, fh = fc.create(ROOT, b"file", 0o666, umask=0o027)
    st_d, st_f = os.stat(share / "mine"), os.stat(share / "file")
    assert (st_d.st_uid, st_d.st_gid, stat.S_IMODE(st_d.st_mode)) == (1234, 5678, 0o755)
    assert (st_f.st_uid, st_f.st_gid, stat.S_IMODE(st_f.st_mode)) == (1234, 5678, 0o640)
    assert (d.attr.uid, f.attr.uid) == (1234, 1234)


# -- data --------------------------------------------------------------------------------
def test_write_read_roundtrip(fc, share):
    f, fh = fc.create(ROOT, b"data", 0o644)
    payload = os.urandom(300_000)
    assert fc.write(f.nodeid, fh, 0, payload) == len(payload)
    assert fc.write(f.nodeid, fh, 500_000, b"tail") == 4
    fc.flush(f.nodeid, fh)
    fc.fsync(f.nodeid, fh, datasync=True)
    host = (share / "data").read_bytes()
    assert host[:300_000] == payload and host[500_000:] == b"tail" and host[300_000:500_000] == bytes(200_000)
    assert fc.read(f.nodeid, fh, 0, 300_000) == payload
    assert fc.read(f.nodeid, fh, 499_998, 100) == b"\0\0tail"
    assert fc.read(f.nodeid, fh, 10**9, 100) == b""
    assert fc.getattr(f.nodeid, fh=fh).size == 500_004
    fc.release(f.nodeid, fh)
    assert errno_of(fc.read, f.nodeid, fh, 0, 1) == errno.EBADF


def test_open_flags_append_and_trunc(fc, share):
    (share / "f").write_bytes(b"0123456789")
    e = fc.lookup(ROOT, b"f")
    fh = fc.open(e.nodeid, os.O_WRONLY | os.O_APPEND)
    fc.write(e.nodeid, fh, 0, b"AB")
    assert (share / "f").read_bytes() == b"0123456789AB"
    fc.release(e.nodeid, fh)
    fh = fc.open(e.nodeid, os.O_RDWR | os.O_TRUNC)
    assert os.path.getsize(share / "f") == 0
    fc.release(e.nodeid, fh)


def test_setattr_mode_size_times_owner(fc, share):
    (share / "f").write_bytes(b"abcdef")
    e = fc.lookup(ROOT, b"f")
    a = fc.setattr(e.nodeid, mode=0o4711)
    assert stat.S_IMODE(os.stat(share / "f").st_mode) == 0o4711 and stat.S_IMODE(a.mode) == 0o4711
    a = fc.setattr(e.nodeid, size=2)
    assert (share / "f").read_bytes() == b"ab" and a.size == 2
    a = fc.setattr(e.nodeid, atime=1_000_000_001_500, mtime=2_000_000_002_700)
    st = os.stat(share / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_001_500, 2_000_000_002_700)
    assert a.mtime_ns == 2_000_000_002_700
    a = fc.setattr(e.nodeid, mtime_now=True)
    assert abs(os.stat(share / "f").st_mtime - __import__("time").time()) < 5
    assert os.stat(share / "f").st_atime_ns == 1_000_000_001_500     # atime untouched
    a = fc.setattr(e.nodeid, uid=4321, gid=8765)
    assert (os.stat(share / "f").st_uid, os.stat(share / "f").st_gid) == (4321, 8765)
    assert_attr_matches(a, share / "f")


def test_fallocate_lseek_copy_file_range(fc, share):
    f, fh = fc.create(ROOT, b"sparse", 0o644)
    fc.write(f.nodeid, fh, 1 << 20, b"data")
    assert fc.lseek(f.nodeid, fh, 0, os.SEEK_DATA) >= 0
    hole = fc.lseek(f.nodeid, fh, 0, os.SEEK_HOLE)
    assert hole == os.lseek(os.open(share / "sparse", os.O_RDONLY), 0, os.SEEK_HOLE)
    assert errno_of(fc.lseek, f.nodeid, fh, 1 << 30, os.SEEK_DATA) == errno.ENXIO
    fc.fallocate(f.nodeid, fh, 0, 4 << 20)
    assert os.path.getsize(share / "sparse") == 4 << 20
    g, gh = fc.create(ROOT, b"copy", 0o644)
    assert fc.copy_file_range(f.nodeid, fh, 1 << 20, g.nodeid, gh, 0, 4) == 4
    assert (share / "copy").read_bytes() == b"data"


# -- directories ------------------------------------------------------------------------
def test_readdir_lists_what_the_host_lists_and_resumes(fc, share):
    names = {f"n{i:03}".encode() for i in range(150)}
    for n in names:
        (share / n.decode()).write_bytes(b"")
    fh = fc.opendir(ROOT)
    seen, off = [], 0
    while True:
        batch = fc.readdir(ROOT, fh, off, size=512)
        if not batch:
            break
        seen += batch
        off = batch[-1][3]
    got = [e[0] for e in seen]
    assert sorted(got) == sorted(names | {b".", b".."}) and len(got) == len(set(got))
    for name, ino, typ, _ in seen:
        if name not in (b".", b".."):
            assert ino == os.lstat(share / name.decode()).st_ino and typ == stat.S_IFREG >> 12
    fc.releasedir(ROOT, fh)


def test_readdirplus_counts_lookups_exactly(fc, server, share):
    for n in ("a", "b"):
        (share / n).write_bytes(b"x")
    (share / "sub").mkdir()
    fh = fc.opendir(ROOT)
    entries = fc.readdir(ROOT, fh, 0, size=4096, plus=True)
    by_name = {e[0]: e[4] for e in entries}
    assert by_name[b"."].nodeid == 0 and by_name[b".."].nodeid == 0
    for n in (b"a", b"b", b"sub"):
        node = server.vfs.node(by_name[n].nodeid)
        assert node.nlookup == 1
        assert_attr_matches(by_name[n].attr, share / n.decode())
    assert server.vfs.node_count() == 4
    fc.releasedir(ROOT, fh)


def test_readdirplus_lists_names_gone_since_the_listing_without_attributes(share):
    """With directory handles (a listing is a snapshot per handle): a name
    removed after the listing was taken is listed with nodeid 0 (the kernel
    then takes the dirent alone), not dropped: a chunk whose names have all
    gone must not come back empty, which the kernel reads as the end of the
    directory. Its neighbours are looked up as ever."""
    server = FuseServer(Vfs(HostBackend(str(share)), cache="auto"), opendir=True)
    fc = FuseClient(direct_transport(server))
    fc.init()
    names = [f"n{i:02}" for i in range(40)]
    for n in names:
        (share / n).write_bytes(b"")
    fh = fc.opendir(ROOT)
    first = fc.readdir(ROOT, fh, 0, size=600, plus=True)       # the snapshot is taken here
    rest = [n for n in names if n.encode() not in {e[0] for e in first}]
    gone, kept = rest[:6], rest[6:]
    for n in gone:
        (share / n).unlink()
    seen, off = {}, first[-1][3]
    while batch := fc.readdir(ROOT, fh, off, size=600, plus=True):
        seen.update((e[0], e[4]) for e in batch)
        off = batch[-1][3]
    assert sorted(seen) == sorted(n.encode() for n in rest)
    for n in gone:
        assert seen[n.encode()].nodeid == 0
    for n in kept:
        assert server.vfs.node(seen[n.encode()].nodeid).nlookup == 1
        assert_attr_matches(seen[n.encode()].attr, share / n)
    fc.releasedir(ROOT, fh)


def test_directory_handles_only_where_the_guest_needs_them(share, tmp_path):
    """OPENDIR answers ENOSYS (the kernel then lists with handle 0) at
    cache=auto and always over the host backend; a handle at never and
    metadata, with --opendir, and over backends that list from a snapshot."""
    from pyvirtiofsd.vfs.backends.memory import MemoryBackend
    from pyvirtiofsd.vfs.overlay.backend import OverlayBackend
    lower = tmp_path / "lower"
    lower.mkdir()

    def opendir_error(backend, cache, opendir=None):
        c = FuseClient(direct_transport(FuseServer(Vfs(backend, cache=cache), opendir=opendir)))
        c.init()
        return c.request(abi.OPENDIR, ROOT, abi.OPEN_IN.pack(os.O_RDONLY, 0))[0]
    host = lambda: HostBackend(str(share))      # noqa: E731
    assert [opendir_error(host(), c) for c in ("never", "metadata", "auto", "always")] == \
        [0, 0, errno.ENOSYS, errno.ENOSYS]
    assert opendir_error(host(), "auto", opendir=True) == 0
    assert opendir_error(host(), "never", opendir=False) == errno.ENOSYS
    assert opendir_error(MemoryBackend(), "auto") == 0
    assert opendir_error(OverlayBackend(host(), [HostBackend(str(lower))]), "auto") == 0
    with pytest.raises(ValueError):
        FuseServer(Vfs(MemoryBackend(), cache="auto"), opendir=False)


def test_listing_without_a_handle_resumes_from_the_host_cookies(fc, share):
    """Handle 0, small chunks, names removed between them (some listed, some
    not yet): what is listed is the host's getdents, in its order, each name
    once, and nothing removed before its turn. The root's '..' is itself."""
    names = [f"entry-{i:03}" + "x" * (i % 40) for i in range(300)]
    for n in names:
        (share / n).write_bytes(b"")
    (share / "sub").mkdir()
    host_order = [e.name for e in os.scandir(share)]        # getdents order
    assert fc.opendir(ROOT) == 0
    seen, off, gone_unlisted = [], 0, set()
    while batch := fc.readdir(ROOT, 0, off, size=512):
        seen += batch
        off = batch[-1][3]
        listed = {e[0].decode() for e in seen}
        left = [n for n in host_order if n != "sub" and (share / n).exists()]
        for n in left[len(seen) % 5::41][:3]:       # some listed already, some not
            (share / n).unlink()
            if n not in listed:
                gone_unlisted.add(n)
    got = [e[0].decode() for e in seen if e[0] not in (b".", b"..")]
    assert gone_unlisted and got == [n for n in host_order if n not in gone_unlisted]
    by_name = {e[0]: e for e in seen}
    assert by_name[b".."][1] == by_name[b"."][1] == os.stat(share).st_ino
    assert by_name[b"sub"][2] == stat.S_IFDIR >> 12
    fc.fsync(ROOT, 0, op=abi.FSYNCDIR)          # (FSYNCDIR with no handle)


def test_statfs_matches_host(fc, share):
    blocks, bfree, bavail, files, ffree, bsize, namelen, frsize = fc.statfs()
    sv = os.statvfs(share)
    assert (blocks, bsize, namelen, frsize, files) == (sv.f_blocks, sv.f_bsize, sv.f_namemax, sv.f_frsize, sv.f_files)


def test_xattrs(fc, share):
    (share / "f").write_bytes(b"")
    e = fc.lookup(ROOT, b"f")
    fc.setxattr(e.nodeid, b"user.color", b"blue")
    assert os.getxattr(share / "f", "user.color") == b"blue"
    assert fc.getxattr(e.nodeid, b"user.color") == b"blue"
    assert fc.getxattr(e.nodeid, b"user.color", size=0) == 4
    assert errno_of(fc.getxattr, e.nodeid, b"user.color", size=2) == errno.ERANGE
    assert b"user.color" in fc.listxattr(e.nodeid)
    assert fc.listxattr(e.nodeid, size=0) == len(b"".join(n + b"\0" for n in fc.listxattr(e.nodeid)))
    assert errno_of(fc.setxattr, e.nodeid, b"user.color", b"red", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(fc.getxattr, e.nodeid, b"user.none") == errno.ENODATA
    fc.removexattr(e.nodeid, b"user.color")
    assert "user.color" not in os.listxattr(share / "f")


def test_a_missing_xattr_answers_enodata_where_the_host_does(fc, share):
    """The host backend answers a missing attribute from getxattr's size
    query, without an exception; what it answers is still the host's: the
    value where there is one, ENODATA where not, for a file, a directory and
    a symlink itself (not its target), and ERANGE for a short buffer."""
    from pyvirtiofsd import syscalls
    (share / "f").write_bytes(b"")
    (share / "d").mkdir()
    os.symlink("f", share / "l")
    os.setxattr(share / "f", "user.v", b"12345")
    os.setxattr(share / "d", "user.v", b"")
    assert syscalls.getxattr_size(str(share / "f"), b"user.v") == 5
    assert syscalls.getxattr_size(str(share / "d"), b"user.v") == 0
    assert syscalls.getxattr_size(str(share / "f"), b"user.none") is None
    with pytest.raises(FileNotFoundError):
        syscalls.getxattr_size(str(share / "missing"), b"user.v")
    f, d, link = (fc.lookup(ROOT, n).nodeid for n in (b"f", b"d", b"l"))
    assert fc.getxattr(f, b"user.v") == b"12345" and fc.getxattr(d, b"user.v") == b""
    assert errno_of(fc.getxattr, link, b"user.v") == errno.ENODATA      # the link's own, as lgetxattr
    assert errno_of(fc.getxattr, f, b"user.v", size=2) == errno.ERANGE
    for node, path in ((f, share / "f"), (d, share / "d"), (link, share / "l")):
        for name in (b"user.none", b"system.posix_acl_access", b"security.selinux"):
            with pytest.raises(OSError) as host:
                os.getxattr(path, name, follow_symlinks=False)
            assert errno_of(fc.getxattr, node, name) == host.value.errno, (path, name)


# -- hostile requests --------------------------------------------------------------------
@pytest.mark.parametrize("name", [b"..", b".", b"a/b", b"", b"../../etc", b"x" * 256])
def test_bad_names_are_refused(fc, share, name):
    err = errno_of(fc.lookup, ROOT, name)
    assert err in (errno.EINVAL, errno.ENAMETOOLONG)
    assert errno_of(fc.mkdir, ROOT, name) in (errno.EINVAL, errno.ENAMETOOLONG)
    assert os.listdir(share) == []


def test_malformed_requests_get_errors_not_crashes(fc, server, share):
    send = fc.send
    assert send(b"\x01\x02\x03", 4096) == b""                           # shorter than a header
    hdr = abi.IN_HEADER.pack(1000, abi.GETATTR, 77, ROOT, 0, 0, 0, 0, 0)  # says 1000, carries 40
    err = abi.OUT_HEADER.unpack(send(hdr, 4096))
    assert err == (16, -errno.EINVAL, 77)
    assert fc.request(abi.LOOKUP, ROOT, b"no-terminator")[0] == errno.EINVAL
    assert fc.request(abi.GETATTR, 999_999, abi.GETATTR_IN.pack(0, 0, 0))[0] == errno.ESTALE
    assert fc.request(abi.READ, ROOT, abi.READ_IN.pack(4242, 0, 10, 0, 0, 0, 0))[0] == errno.EBADF
    assert fc.request(abi.SETATTR, ROOT, b"short")[0] == errno.EINVAL
    f, fh = fc.create(ROOT, b"w", 0o644)
    lie = abi.WRITE_IN.pack(fh, 0, 1 << 20, 0, 0, 0, 0) + b"tiny"      # size larger than the data
    assert fc.request(abi.WRITE, f.nodeid, lie)[0] == errno.EINVAL
    # a reply buffer too small for the header gets no reply at all
    assert send(abi.IN_HEADER.pack(40, abi.GETATTR, 5, ROOT, 0, 0, 0, 0, 0), 8) == b""
    # a READ larger than the reply room is cut to the room
    fc.write(f.nodeid, fh, 0, b"z" * 1000)
    out = fc.request(abi.READ, f.nodeid, abi.READ_IN.pack(fh, 0, 1000, 0, 0, 0, 0), room=16 + 100)
    assert out == (0, b"z" * 100)
    # the server still works
    assert fc.getattr(ROOT).ino == os.stat(share).st_ino


def test_dev_numbers_roundtrip():
    for major, minor in ((1, 3), (8, 17), (259, 0), (4095, 1048575)):
        dev = os.makedev(major, minor)
        assert decode_dev(encode_dev(dev)) == dev
    assert struct.calcsize("<Q") == 8


# -- locks ---------------------------------------------------------------------------------
def test_posix_locks_conflict_and_flush_releases(fc, share):
    import fcntl
    f, fh = fc.create(ROOT, b"l", 0o644)
    fh2 = fc.open(f.nodeid)
    fc.setlk(f.nodeid, fh, 1, 0, 99, fcntl.F_WRLCK)
    assert errno_of(fc.setlk, f.nodeid, fh2, 2, 50, 60, fcntl.F_RDLCK) == errno.EAGAIN
    start, end, typ, _ = fc.getlk(f.nodeid, fh2, 2, 50, 60, fcntl.F_RDLCK)
    assert (start, end, typ) == (0, 99, fcntl.F_WRLCK)
    assert fc.getlk(f.nodeid, fh2, 2, 100, 200, fcntl.F_WRLCK)[2] == fcntl.F_UNLCK
    fc.call(abi.FLUSH, f.nodeid, abi.FLUSH_IN.pack(fh, 0, 0, 1))      # owner 1 closes a descriptor
    fc.setlk(f.nodeid, fh2, 2, 50, 60, fcntl.F_RDLCK)
    # flock is per open file and independent of POSIX locks
    fc.setlk(f.nodeid, fh, 10, 0, 0, fcntl.F_WRLCK, flock=True)
    assert errno_of(fc.setlk, f.nodeid, fh2, 11, 0, 0, fcntl.F_WRLCK, flock=True) == errno.EAGAIN
    fc.call(abi.RELEASE, f.nodeid, abi.RELEASE_IN.pack(fh, 0, abi.RELEASE_FLOCK_UNLOCK, 10))
    fc.setlk(f.nodeid, fh2, 11, 0, 0, fcntl.F_WRLCK, flock=True)


def test_setlkw_is_deferred_until_unlock_and_interrupt_cancels(fc, server):
    import fcntl
    import threading
    from pyvirtiofsd.protocol.buffers import Reader, Writer
    from pyvirtiofsd.protocol.server import DEFERRED
    f, fh = fc.create(ROOT, b"l", 0o644)
    fc.setlk(f.nodeid, fh, 1, 0, 10, fcntl.F_WRLCK)
    done, replies = threading.Event(), []

    def send_setlkw(unique):
        req = abi.IN_HEADER.pack(40 + abi.LK_IN.size, abi.SETLKW, unique, f.nodeid, 0, 0, 7, 0, 0) + \
            abi.LK_IN.pack(fh, 2, 5, 5, fcntl.F_WRLCK, 7, 0, 0)
        buf = bytearray(64)
        n = server.handle(Reader([req]), Writer([buf]),
                          complete=lambda tag, n: (replies.append(abi.OUT_HEADER.unpack_from(buf)), done.set()))
        assert n == DEFERRED
    send_setlkw(9001)
    assert not done.wait(0.2)                     # still blocked, and the server keeps serving
    fc.setlk(f.nodeid, fh, 1, 0, 10, fcntl.F_UNLCK)
    assert done.wait(5) and replies[-1] == (16, 0, 9001)
    done.clear()
    # owner 2 holds byte 5 now, so owner 1 waits
    req_owner1 = abi.LK_IN.pack(fh, 1, 0, 10, fcntl.F_WRLCK, 7, 0, 0)
    hdr = abi.IN_HEADER.pack(40 + len(req_owner1), abi.SETLKW, 9003, f.nodeid, 0, 0, 7, 0, 0)
    buf = bytearray(64)
    assert server.handle(Reader([hdr + req_owner1]), Writer([buf]),
                         complete=lambda tag, n: (replies.append(abi.OUT_HEADER.unpack_from(buf)), done.set())) == DEFERRED
    fc.request(abi.INTERRUPT, 0, abi.INTERRUPT_IN.pack(9003))
    assert done.wait(5) and replies[-1] == (16, -errno.EINTR, 9003)


def test_security_context_extension_labels_new_objects(fc, share):
    """FUSE_SECURITY_CTX (7.38 request extensions): the context the guest's
    LSM computed is stored as its xattr on the new object."""
    label = b"system_u:object_r:virt_t:s0\0"
    entry = abi.SECCTX.pack(len(label), 0) + b"security.selinux\0" + label
    entry += b"\0" * (-len(entry) % 8)
    ext = abi.SECCTX_HEADER.pack(abi.SECCTX_HEADER.size + len(entry), 1) + entry
    for op, body, name in ((abi.CREATE, abi.CREATE_IN.pack(os.O_RDWR, 0o644, 0, 0) + b"f\0", "f"),
                           (abi.MKDIR, abi.MKDIR_IN.pack(0o755, 0) + b"d\0", "d"),
                           (abi.SYMLINK, b"l\0target\0", "l")):
        fc.unique += 1
        hdr = abi.IN_HEADER.pack(40 + len(body) + len(ext), op, fc.unique, ROOT, 0, 0, 1, len(ext) // 8, 0)
        out = fc.send(hdr + body + ext, 4096)
        assert abi.OUT_HEADER.unpack_from(out)[1] == 0
        assert os.getxattr(share / name, "security.selinux", follow_symlinks=False) == label
    assert fc.readlink(fc.lookup(ROOT, b"l").nodeid) == b"target"
    # an extension longer than the request is refused
    fc.unique += 1
    hdr = abi.IN_HEADER.pack(40 + 10, abi.MKDIR, fc.unique, ROOT, 0, 0, 1, 4, 0)
    assert abi.OUT_HEADER.unpack_from(fc.send(hdr + abi.MKDIR_IN.pack(0o755, 0) + b"e\0", 4096))[1] == -errno.EINVAL


def test_access_syncfs_fsyncdir_ioctl_poll(fc, share):
    (share / "private").write_bytes(b"")
    os.chmod(share / "private", 0o600)
    e = fc.lookup(ROOT, b"private")
    fc.access(e.nodeid, os.R_OK | os.W_OK)                          # root reads and writes anything
    assert errno_of(fc.access, e.nodeid, os.X_OK) == errno.EACCES    # but runs only what has an x bit
    fc.uid = fc.gid = 1000
    assert errno_of(fc.access, e.nodeid, os.R_OK) == errno.EACCES
    fc.access(e.nodeid, os.F_OK)
    fc.uid = fc.gid = 0
    fc.syncfs()
    fh = fc.opendir(ROOT)
    fc.fsync(ROOT, fh, op=abi.FSYNCDIR)
    fc.fsync(ROOT, fh, datasync=True, op=abi.FSYNCDIR)
    fc.releasedir(ROOT, fh)
    fh = fc.open(e.nodeid, os.O_RDONLY)
    assert fc.request(abi.IOCTL, e.nodeid, abi.IOCTL_IN.pack(fh, 0, 0x5401, 0, 0, 0))[0] == errno.ENOTTY
    import select
    events = select.POLLIN | select.POLLOUT | select.POLLPRI
    revents = abi.POLL_OUT.unpack(fc.call(abi.POLL, e.nodeid, abi.POLL_IN.pack(fh, 0, 0, events)))[0]
    assert revents == select.POLLIN | select.POLLOUT


def test_negative_entries_follow_the_cache_mode(share):
    """cache=auto/always answer a missing name with a cacheable negative
    entry (node id 0); cache=never with ENOENT."""
    for cache, valid in (("auto", 1), ("always", 86400)):
        c = FuseClient(direct_transport(FuseServer(Vfs(HostBackend(str(share)), cache=cache))))
        c.init()
        err, out = c.request(abi.LOOKUP, ROOT, b"missing\0")
        nodeid, _, entry_valid, _, _, _ = abi.ENTRY_OUT.unpack(out)[:6]
        assert (err, nodeid, entry_valid) == (0, 0, valid)
    c = FuseClient(direct_transport(FuseServer(Vfs(HostBackend(str(share)), cache="never"))))
    c.init()
    assert c.request(abi.LOOKUP, ROOT, b"missing\0")[0] == errno.ENOENT
