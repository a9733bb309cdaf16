"""Differential tests: the host kernel is the oracle.

The same sequence of syscall-level operations runs on (a) a plain directory
of the host kernel and (b) our FUSE mount (HostBackend over another
directory, served through /dev/fuse by this process), and every result
(value or errno) and the final tree must agree.

Compared per object: file type and permission bits, nlink, uid, gid, size,
content, symlink target, user.* xattrs, directory listings, and which names
are hard links of one another (grouping by inode on each side).
Not compared, on purpose:
  - st_ino, st_dev: they number different objects on the two sides (ours
    are FUSE node inodes on another device); only the grouping is compared;
  - st_atime: relatime and the page cache decide when reads touch it, and
    they differ between a local file and a FUSE file;
  - st_ctime, and st_mtime unless it was set explicitly: they are "now" of
    the moment each side ran the operation. An mtime equal to one of the
    values the sequence set with utime is compared exactly (nanoseconds);
  - st_blocks/st_blksize: allocation detail of the page cache and of
    direct I/O write sizes.

Operations run as root in this process, or as uid/gid 1000 in a forked
child (setgroups([]), setgid, setuid), so permission errnos are compared too.
"""
import errno
import fcntl
import os
import pickle
import struct
import select
import shutil
import signal
import stat
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusemount
from pyvirtiofsd import syscalls

fusemount.require_fuse()

FLOCK = struct.Struct("hhqqi4x")     # struct flock
USER = 1000
EXPLICIT_NS = (1_000_000_000_123_456_789, 1_500_000_000_000_000_001,
               2_000_000_000_999_999_999, -123_456_789_000)
SLOTS = 3
CHILD_TIMEOUT = 60


# -- running operations --------------------------------------------------------------------
class Runner:
    """Executes operations below one root directory; results are ("ok", value)
    or ("err", "ENAME"). Open files live in numbered slots."""

    def __init__(self, root):
        self.root = root
        self.fds = {}
        self.locked = set()     # slots that took flock or OFD locks

    def p(self, path):
        return os.path.join(self.root, path)

    def run(self, op):
        name, *args = op
        try:
            return ("ok", getattr(self, "op_" + name)(*args))
        except OSError as e:
            return ("err", errno.errorcode.get(e.errno, str(e.errno)))

    def run_all(self, ops):
        try:
            return [self.run(op) for op in ops]
        finally:
            self.close_all()

    def close_all(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def fd(self, slot):
        if slot not in self.fds:
            raise OSError(errno.EBADF, "empty slot")
        return self.fds[slot]

    # fifos would block an open without a peer: every open is non-blocking
    def op_open(self, path, flags, mode, slot):
        if slot in self.fds:
            os.close(self.fds.pop(slot))
        self.fds[slot] = os.open(self.p(path), flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)

    def op_close(self, slot):
        os.close(self.fds.pop(slot) if slot in self.fds else -1)
        if slot in self.locked:
            # A /dev/fuse mount sends RELEASE (which drops flock and OFD locks)
            # after close() returns; virtio-fs sends it synchronously. Give it
            # a moment, on both sides alike (docs/compat.md).
            self.locked.discard(slot)
            time.sleep(0.05)

    def op_read(self, slot, n):
        return os.read(self.fd(slot), n)

    def op_write(self, slot, data):
        return os.write(self.fd(slot), data)

    def op_pread(self, slot, n, off):
        return os.pread(self.fd(slot), n, off)

    def op_pwrite(self, slot, data, off):
        return os.pwrite(self.fd(slot), data, off)

    def op_lseek(self, slot, off, whence):
        fd = self.fd(slot)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            # directory offsets are cookies of each file system (ext4 answers
            # SEEK_END with LLONG_MAX, FUSE directories use the generic i_size
            # one, and the kernel never asks the server): not comparable
            return "directory"
        return os.lseek(fd, off, whence)

    def op_ftruncate(self, slot, length):
        os.ftruncate(self.fd(slot), length)

    def op_fallocate(self, slot, mode, off, length):
        syscalls.fallocate(self.fd(slot), mode, off, length)

    def op_fsync(self, slot):
        os.fsync(self.fd(slot))

    def op_fstat(self, slot):
        return norm_stat(os.fstat(self.fd(slot)))

    def op_fchmod(self, slot, mode):
        os.fchmod(self.fd(slot), mode)

    def op_mkdir(self, path, mode):
        os.mkdir(self.p(path), mode)

    def op_rmdir(self, path):
        os.rmdir(self.p(path))

    def op_unlink(self, path):
        os.unlink(self.p(path))

    def op_link(self, src, dst):
        os.link(self.p(src), self.p(dst), follow_symlinks=False)

    def op_symlink(self, target, path):
        os.symlink(target, self.p(path))

    def op_readlink(self, path):
        return os.readlink(self.p(path))

    def op_rename(self, src, dst):
        os.rename(self.p(src), self.p(dst))

    def op_rename2(self, src, dst, flags):
        syscalls.renameat2(syscalls.AT_FDCWD, self.p(src), syscalls.AT_FDCWD, self.p(dst), flags)

    def op_chmod(self, path, mode):
        os.chmod(self.p(path), mode)

    def op_chown(self, path, uid, gid, follow=True):
        os.chown(self.p(path), uid, gid, follow_symlinks=follow)

    def op_utime(self, path, ns, follow=True):
        os.utime(self.p(path), ns=ns, follow_symlinks=follow)

    def op_utime_now(self, path):
        os.utime(self.p(path))

    def op_truncate(self, path, length):
        os.truncate(self.p(path), length)

    def op_setxattr(self, path, name, value, flags, follow=True):
        os.setxattr(self.p(path), name, value, flags, follow_symlinks=follow)

    def op_getxattr(self, path, name, follow=True):
        return os.getxattr(self.p(path), name, follow_symlinks=follow)

    def op_listxattr(self, path, follow=True):
        return sorted(n for n in os.listxattr(self.p(path), follow_symlinks=follow) if n.startswith("user."))

    def op_removexattr(self, path, name, follow=True):
        os.removexattr(self.p(path), name, follow_symlinks=follow)

    def op_mkfifo(self, path, mode):
        os.mkfifo(self.p(path), mode)

    def op_listdir(self, path):
        return sorted(os.listdir(self.p(path)))

    def op_lstat(self, path):
        return norm_stat(os.lstat(self.p(path)))

    def op_stat(self, path):
        return norm_stat(os.stat(self.p(path)))

    def op_access(self, path, mode):
        return os.access(self.p(path), mode)

    def op_tmpfile(self, dirpath, mode, slot):
        """O_TMPFILE: an unnamed file in dirpath, in the slot."""
        if slot in self.fds:
            os.close(self.fds.pop(slot))
        self.fds[slot] = os.open(self.p(dirpath), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)

    def op_link_slot(self, slot, path):
        """Give the open (tmp)file a name, as linkat(AT_EMPTY_PATH) would."""
        os.link(f"/proc/self/fd/{self.fd(slot)}", self.p(path), follow_symlinks=True)

    def op_lock(self, slot, type_, start, length):
        """A non-blocking open-file-description lock; the two slots are two owners."""
        self.locked.add(slot)
        fcntl.fcntl(self.fd(slot), fcntl.F_OFD_SETLK, FLOCK.pack(type_, os.SEEK_SET, start, length, 0))

    def op_getlk(self, slot, type_, start, length):
        out = fcntl.fcntl(self.fd(slot), fcntl.F_OFD_GETLK, FLOCK.pack(type_, os.SEEK_SET, start, length, 0))
        t, _, s, l, _ = FLOCK.unpack(out)
        return (t, s, l)

    def op_flock(self, slot, how):
        self.locked.add(slot)
        fcntl.flock(self.fd(slot), how | fcntl.LOCK_NB)

    def op_listdir_fd(self, slot):
        """Read a directory through an open descriptor (rewound each time)."""
        return sorted(os.listdir(self.fd(slot)))

    def op_read_file(self, path):
        with open(self.p(path), "rb") as f:
            return f.read()


def norm_stat(s):
    """The comparable part of a stat result (see the module docstring)."""
    mtime = s.st_mtime_ns if s.st_mtime_ns in EXPLICIT_NS else None
    return (stat.filemode(s.st_mode), s.st_nlink, s.st_uid, s.st_gid, s.st_size, mtime)


def snapshot(root):
    """Everything comparable about the tree under root (as root)."""
    out, inos = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            s = os.lstat(full)
            inos.setdefault(s.st_ino, []).append(rel)
            info = {"stat": norm_stat(s)}
            if stat.S_ISLNK(s.st_mode):
                info["target"] = os.readlink(full)
            else:
                info["xattrs"] = {n: os.getxattr(full, n) for n in sorted(os.listxattr(full))
                                  if n.startswith("user.")}
            if stat.S_ISREG(s.st_mode):
                with open(full, "rb") as f:
                    info["data"] = f.read()
            if stat.S_ISDIR(s.st_mode):
                info["list"] = sorted(os.listdir(full))
            out[rel] = info
    links = sorted(sorted(v) for v in inos.values() if len(v) > 1)
    return out, links


def run_as_user(root, ops, uid=USER, gid=USER):
    """Run ops under root in a forked child with the credentials of uid/gid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                         # child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            data = pickle.dumps(Runner(root).run_all(ops))
            with os.fdopen(w, "wb") as f:
                f.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline = [], time.monotonic() + CHILD_TIMEOUT
    poller = select.poll()          # not select(): the server's O_PATH fds push ours past 1024
    poller.register(r, select.POLLIN)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError(f"user child did not finish within {CHILD_TIMEOUT}s: {ops}")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"user child failed on {ops}"
    return pickle.loads(b"".join(chunks))


def run_sequence(root, steps):
    """steps: [(actor, op)]; consecutive user ops run in one child.
    Open-file slots do not survive a change of actor."""
    results, runner, i = [], Runner(root), 0
    while i < len(steps):
        actor = steps[i][0]
        j = i
        while j < len(steps) and steps[j][0] == actor:
            j += 1
        ops = [op for _, op in steps[i:j]]
        results += runner.run_all(ops) if actor == "root" else run_as_user(root, ops)
        i = j
    return results


# -- the two sides -------------------------------------------------------------------------
class Sides:
    """A plain host directory and our mount of another one, with a fresh pair
    of run directories for every sequence."""

    def __init__(self, plain, backing, mnt):
        self.plain, self.backing, self.mnt = plain, backing, mnt
        self.n = 0

    def new_run(self):
        self.n += 1
        name = f"run{self.n}"
        roots = (os.path.join(self.plain, name), os.path.join(self.mnt, name))
        for r in roots:
            os.mkdir(r)
            os.chmod(r, 0o777)
        return roots

    def cleanup(self, name):
        # through the mount, so the kernel forgets the inodes: HostBackend
        # keeps an O_PATH fd per inode the kernel knows, and files removed
        # behind its back stay known (cache=auto) until memory pressure
        shutil.rmtree(os.path.join(self.mnt, name), ignore_errors=True)
        for base in (self.plain, self.backing):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _mkdir_traversable():
    d = tempfile.mkdtemp(prefix="pyvfs-diff-")
    os.chmod(d, 0o755)       # the user child must reach the roots
    return d


@pytest.fixture(scope="module", params=["never", "auto"])
def sides(request):
    from pyvirtiofsd.vfs.backends.host import HostBackend
    old_umask = os.umask(0o022)
    plain, backing = _mkdir_traversable(), _mkdir_traversable()
    try:
        with fusemount.mounted(HostBackend(backing), cache=request.param, threads=4) as mnt:
            yield Sides(plain, backing, mnt)
    finally:
        os.umask(old_umask)
        shutil.rmtree(plain, ignore_errors=True)
        shutil.rmtree(backing, ignore_errors=True)


def fmt_step(k, step):
    actor, (name, *args) = step
    return f"  [{k}] {actor:4} {name}({', '.join(_short(a) for a in args)})"


def _short(a):
    r = repr(a)
    return r if len(r) <= 40 else r[:30] + f"...({len(a)})"


def compare(sides, steps):
    """Run steps on both sides; assert the same results and final tree."""
    plain_root, fuse_root = sides.new_run()
    try:
        want = run_sequence(plain_root, steps)
        got = run_sequence(fuse_root, steps)
        problems = []
        for k, (step, a, b) in enumerate(zip(steps, want, got)):
            if a != b:
                problems.append(f"{fmt_step(k, step)}\n      host kernel: {_short(a)}\n      pyvirtiofsd: {_short(b)}")
        if not problems:
            snap_a, snap_b = snapshot(plain_root), snapshot(fuse_root)
            if snap_a != snap_b:
                a, b = snap_a[0], snap_b[0]
                for path in sorted(set(a) | set(b)):
                    if a.get(path) != b.get(path):
                        problems.append(f"  final tree {path!r}:\n      host kernel: {a.get(path)}\n      pyvirtiofsd: {b.get(path)}")
                if snap_a[1] != snap_b[1]:
                    problems.append(f"  hard link groups: host {snap_a[1]} ours {snap_b[1]}")
        if problems:
            seq = "\n".join(fmt_step(k, s) for k, s in enumerate(steps))
            pytest.fail("differences from the host kernel:\n" + "\n".join(problems[:5])
                        + f"\nsequence (cwd = a fresh 0777 directory):\n{seq}", pytrace=False)
    finally:
        sides.cleanup(os.path.basename(plain_root))


# -- the fixed corpus ----------------------------------------------------------------------
O = os
RW, WO, RO = O.O_RDWR, O.O_WRONLY, O.O_RDONLY
CREAT, EXCL, TRUNC, APPEND = O.O_CREAT, O.O_EXCL, O.O_TRUNC, O.O_APPEND
XC, XR = os.XATTR_CREATE, os.XATTR_REPLACE
KEEP, PUNCH, ZERO = syscalls.FALLOC_FL_KEEP_SIZE, syscalls.FALLOC_FL_PUNCH_HOLE, syscalls.FALLOC_FL_ZERO_RANGE
T1, T2, T3, T4 = EXPLICIT_NS
NOREPLACE, EXCHANGE, WHITEOUT = syscalls.RENAME_NOREPLACE, syscalls.RENAME_EXCHANGE, syscalls.RENAME_WHITEOUT


def R(*op):
    return ("root", op)


def U(*op):
    return ("user", op)


CORPUS = {
    "create_excl": [
        R("open", "f", WO | CREAT | EXCL, 0o640, 0), R("write", 0, b"hello"),
        R("open", "f", WO | CREAT | EXCL, 0o640, 1), R("open", "f", RW | CREAT, 0o600, 1),
        R("pread", 1, 10, 0), R("fstat", 0), R("lstat", "f"), R("close", 0),
        R("open", "d/f", WO | CREAT, 0o644, 2), R("open", "f/x", WO | CREAT, 0o644, 2),
    ],
    "trunc_append": [
        R("open", "f", WO | CREAT, 0o644, 0), R("write", 0, b"0123456789"), R("close", 0),
        R("open", "f", WO | APPEND, 0, 0), R("write", 0, b"ab"), R("pwrite", 0, b"XY", 0),
        R("lseek", 0, 0, os.SEEK_CUR), R("read_file", "f"),
        R("open", "f", RW | TRUNC, 0, 1), R("fstat", 1), R("write", 1, b"new"),
        R("lseek", 1, 0, os.SEEK_SET), R("read", 1, 100), R("read_file", "f"),
    ],
    "directory_and_nofollow_flags": [
        R("open", "f", WO | CREAT, 0o644, 0), R("mkdir", "d", 0o755), R("symlink", "f", "l"),
        R("symlink", "d", "ld"), R("open", "f", RO | O.O_DIRECTORY, 0, 1),
        R("open", "d", RO | O.O_DIRECTORY, 0, 1), R("open", "d", WO, 0, 1), R("open", "d", RW | CREAT, 0o644, 1),
        R("open", "l", RO | O.O_NOFOLLOW, 0, 1), R("open", "l", RO, 0, 1),
        R("open", "ld", RO | O.O_DIRECTORY | O.O_NOFOLLOW, 0, 1), R("open", "ld", RO | O.O_DIRECTORY, 0, 1),
        R("open", "l", WO | CREAT | EXCL, 0o644, 2), R("symlink", "missing", "dangling"),
        R("open", "dangling", WO | CREAT, 0o600, 2), R("lstat", "missing"), R("readlink", "dangling"),
    ],
    "read_write_holes": [
        R("open", "f", RW | CREAT, 0o644, 0), R("pwrite", 0, b"tail", 70000), R("fstat", 0),
        R("pread", 0, 8, 69998), R("pread", 0, 4, 10), R("pread", 0, 4, 1 << 20),
        R("lseek", 0, 0, os.SEEK_DATA), R("lseek", 0, 0, os.SEEK_HOLE), R("lseek", 0, 80000, os.SEEK_DATA),
        R("lseek", 0, 0, os.SEEK_END), R("write", 0, b"more"), R("ftruncate", 0, 5), R("pread", 0, 100, 0),
        R("ftruncate", 0, 300000), R("lseek", 0, 100, os.SEEK_DATA), R("lseek", 0, 0, os.SEEK_HOLE),
        R("ftruncate", 0, -1), R("truncate", "f", 7), R("read_file", "f"),
        R("open", "f", RO, 0, 1), R("write", 1, b"x"), R("ftruncate", 1, 0),
    ],
    "big_io": [
        R("open", "f", RW | CREAT, 0o644, 0), R("write", 0, bytes(range(256)) * 9000),
        R("pwrite", 0, b"z" * (3 << 20), 12345), R("fstat", 0), R("pread", 0, 2 << 20, 1 << 20),
    ],
    "fallocate": [
        R("open", "f", RW | CREAT, 0o644, 0), R("fallocate", 0, 0, 0, 10000), R("fstat", 0),
        R("fallocate", 0, KEEP, 10000, 10000), R("fstat", 0), R("pwrite", 0, b"a" * 20000, 0),
        R("fallocate", 0, PUNCH | KEEP, 4096, 8192), R("pread", 0, 16, 4090),
        R("lseek", 0, 0, os.SEEK_HOLE), R("lseek", 0, 4096, os.SEEK_DATA),
        R("fallocate", 0, PUNCH, 0, 4096), R("fallocate", 0, ZERO, 0, 100), R("pread", 0, 4, 98),
        R("fallocate", 0, 0, 0, 0), R("open", "f", RO, 0, 1), R("fallocate", 1, 0, 0, 10),
    ],
    "mkdir_rmdir_unlink": [
        R("mkdir", "d", 0o750), R("mkdir", "d", 0o755), R("mkdir", "d/e", 0o700), R("mkdir", "x/y", 0o755),
        R("rmdir", "d"), R("unlink", "d"), R("open", "d/e/f", WO | CREAT, 0o644, 0), R("rmdir", "d/e/f"),
        R("unlink", "d/e/f"), R("unlink", "d/e/f"), R("rmdir", "d/e"), R("rmdir", "d"),
        R("mkdir", "d", 0o3777), R("lstat", "d"), R("listdir", "."), R("rmdir", "."),
    ],
    "links": [
        R("open", "f", WO | CREAT, 0o644, 0), R("link", "f", "g"), R("lstat", "f"), R("link", "f", "g"),
        R("mkdir", "d", 0o755), R("link", "d", "d2"), R("link", "missing", "h"), R("link", "f", "d/f"),
        R("unlink", "f"), R("lstat", "g"), R("symlink", "g", "s"), R("link", "s", "s2"),
        R("lstat", "s2"), R("readlink", "s2"), R("readlink", "g"), R("readlink", "nothing"),
        R("symlink", "x", "g"), R("symlink", "x" * 4000, "long"), R("readlink", "long"),
        R("rename", "g", "d/f"), R("lstat", "d/f"),
    ],
    "rename": [
        R("open", "a", WO | CREAT, 0o644, 0), R("write", 0, b"A"), R("open", "b", WO | CREAT, 0o600, 1),
        R("rename", "a", "b"), R("read_file", "b"), R("lstat", "b"), R("lstat", "a"),
        R("mkdir", "d", 0o755), R("mkdir", "e", 0o755), R("mkdir", "e/x", 0o755),
        R("rename", "d", "e"), R("rename", "e/x", "d"), R("rename", "b", "d"), R("rename", "d", "b"),
        R("rename", "d", "d/sub"), R("rename", "d", "d"), R("link", "b", "c"), R("rename", "b", "c"),
        R("listdir", "."), R("rename", "missing", "z"), R("rename", "c", "d/c"), R("lstat", "d/c"),
        R("rename", "e", "d/e2"), R("listdir", "d"), R("lstat", "d/e2/x"),
    ],
    "rename_flags": [
        R("open", "a", WO | CREAT, 0o644, 0), R("write", 0, b"A"), R("mkdir", "d", 0o700),
        R("open", "d/x", WO | CREAT, 0o600, 1), R("rename2", "a", "d", NOREPLACE), R("rename2", "a", "b", NOREPLACE),
        R("rename2", "b", "d", EXCHANGE), R("lstat", "d"), R("lstat", "b/x"), R("rename2", "d", "zz", EXCHANGE),
        R("rename2", "d", "d", EXCHANGE), R("rename2", "d", "b", EXCHANGE | NOREPLACE),
        R("rename2", "d", "w", WHITEOUT), R("lstat", "d"), R("lstat", "w"), R("listdir", "."),
        R("rename2", "b", "b/x", EXCHANGE), R("rename2", "b/x", "y", 8),
        U("rename2", "w", "u", NOREPLACE), U("rename2", "y", "u", EXCHANGE),
    ],
    "chmod_chown_utime": [
        R("open", "f", WO | CREAT, 0o644, 0), R("chmod", "f", 0o4751), R("lstat", "f"),
        R("chmod", "f", 0o7777), R("lstat", "f"), R("chown", "f", 1000, 1000), R("lstat", "f"),
        R("chown", "f", -1, 5), R("lstat", "f"), R("utime", "f", (T1, T2)), R("lstat", "f"),
        R("utime", "f", (T3, T4)), R("stat", "f"), R("symlink", "f", "l"),
        R("utime", "l", (T2, T1), False), R("lstat", "l"), R("stat", "l"), R("chown", "l", 7, 8, False),
        R("lstat", "l"), R("stat", "l"), R("chmod", "l", 0o600), R("lstat", "f"),
        R("fchmod", 0, 0o640), R("fstat", 0), R("mkdir", "d", 0o755), R("utime", "d", (T1, T1)),
        R("lstat", "d"), R("chmod", "missing", 0o644),
        # chown(-1, -1) clears setuid from any file but a directory, a fifo's too
        R("mkfifo", "p", 0o4755), R("lstat", "p"), R("chown", "p", -1, -1, False), R("lstat", "p"),
    ],
    "xattrs": [
        R("open", "f", WO | CREAT, 0o644, 0), R("listxattr", "f"), R("getxattr", "f", "user.a"),
        R("setxattr", "f", "user.a", b"1", 0), R("getxattr", "f", "user.a"),
        R("setxattr", "f", "user.a", b"22", XC), R("setxattr", "f", "user.b", b"", XR),
        R("setxattr", "f", "user.a", b"333", XR), R("setxattr", "f", "user.b", b"\0bin\xff", XC),
        R("listxattr", "f"), R("getxattr", "f", "user.b"), R("removexattr", "f", "user.a"),
        R("removexattr", "f", "user.a"), R("listxattr", "f"), R("setxattr", "f", "user.big", b"v" * 4000, 0),
        R("getxattr", "f", "user.big"), R("symlink", "f", "l"),
        R("setxattr", "l", "user.s", b"x", 0, False), R("getxattr", "l", "user.s", False),
        R("setxattr", "l", "user.t", b"y", 0), R("listxattr", "f"), R("mkdir", "d", 0o755),
        R("setxattr", "d", "user.dir", b"d", 0), R("listxattr", "d"), R("setxattr", "f", "bogus.x", b"1", 0),
        R("getxattr", "missing", "user.a"), R("setxattr", "f", "user." + "n" * 250, b"1", 0),
    ],
    "fifo": [
        R("mkfifo", "p", 0o640), R("lstat", "p"), R("mkfifo", "p", 0o600), R("open", "p", RO, 0, 0),
        R("fstat", 0), R("open", "p", WO, 0, 1), R("setxattr", "p", "user.x", b"1", 0), R("listdir", "."),
        R("rename", "p", "q"), R("link", "q", "r"), R("lstat", "r"), R("unlink", "q"), R("lstat", "r"),
    ],
    "user_permissions": [
        R("open", "rootfile", WO | CREAT, 0o644, 0), R("write", 0, b"root"), R("mkdir", "rootdir", 0o755),
        R("mkdir", "sticky", 0o1777), R("chmod", "sticky", 0o1777), R("open", "sticky/rootf", WO | CREAT, 0o666, 1),
        R("mkdir", "secret", 0o700), R("open", "secret/f", WO | CREAT, 0o644, 2),
        U("open", "rootfile", RO, 0, 0), U("read", 0, 100), U("open", "rootfile", WO, 0, 1),
        U("open", "rootfile", RO | TRUNC, 0, 1), U("truncate", "rootfile", 0), U("chmod", "rootfile", 0o777),
        U("chown", "rootfile", 1000, 1000), U("utime", "rootfile", (T1, T2)), U("utime_now", "rootfile"),
        U("open", "rootdir/x", WO | CREAT, 0o644, 1),
        U("mkdir", "rootdir/x", 0o755), U("listdir", "secret"), U("lstat", "secret/f"),
        U("open", "secret/f", RO, 0, 1), U("unlink", "sticky/rootf"), U("rename", "sticky/rootf", "sticky/x"),
        U("open", "sticky/rootf", WO, 0, 1), U("setxattr", "rootfile", "user.u", b"1", 0),
        U("getxattr", "rootfile", "user.u"), U("access", "rootfile", os.W_OK), U("access", "rootfile", os.R_OK),
        U("access", "secret", os.X_OK), U("rename", "rootfile", "mine"), U("unlink", "mine"),
        U("rename", "rootdir", "rd"), U("rmdir", "rd"), U("rename", "secret", "s2"), U("rmdir", "s2"),
    ],
    "user_owns_what_it_creates": [
        R("mkdir", "sgid", 0o2777), R("chown", "sgid", 0, 1234), R("chmod", "sgid", 0o2777),
        U("open", "mine", WO | CREAT | EXCL, 0o666, 0), U("write", 0, b"u"), U("fstat", 0),
        U("mkdir", "mydir", 0o777), U("symlink", "mine", "mylink"), U("mkfifo", "myfifo", 0o644),
        U("open", "sgid/f", WO | CREAT, 0o2755, 1), U("fstat", 1), U("mkdir", "sgid/sub", 0o755),
        U("lstat", "sgid/sub"), U("chmod", "mine", 0o4755), U("lstat", "mine"), U("chown", "mine", 1000, 1000),
        U("chown", "mine", -1, 0), U("chown", "mine", 0, -1), U("utime", "mine", (T2, T3)), U("lstat", "mine"),
        U("setxattr", "mine", "user.k", b"v", 0), U("listxattr", "mine"),
        U("setxattr", "mylink", "user.k", b"v", 0, False), U("link", "mine", "mine2"),
        R("lstat", "sgid/f"), R("lstat", "mine2"),
    ],
    "tmpfile": [
        R("mkdir", "d", 0o755), R("tmpfile", "d", 0o640, 0), R("write", 0, b"anonymous"), R("fstat", 0),
        R("listdir", "d"), R("link_slot", 0, "d/named"), R("lstat", "d/named"), R("fstat", 0),
        R("read_file", "d/named"), R("tmpfile", "missing", 0o600, 1), R("open", "f", WO | CREAT, 0o644, 2),
        R("tmpfile", "f", 0o600, 1),
    ],
    "unlinked_but_open": [
        R("open", "f", RW | CREAT, 0o644, 0), R("write", 0, b"still here"), R("unlink", "f"), R("fstat", 0),
        R("pwrite", 0, b"more", 20), R("pread", 0, 100, 0), R("ftruncate", 0, 4), R("fstat", 0),
        R("lstat", "f"), R("listdir", "."), R("open", "f", RW | CREAT, 0o600, 1), R("fstat", 1),
        R("pread", 0, 100, 0), R("close", 0),
    ],
    "locks_between_owners": [
        R("open", "f", RW | CREAT, 0o644, 0), R("open", "f", RW, 0, 1), R("lock", 0, fcntl.F_WRLCK, 0, 10),
        R("lock", 1, fcntl.F_RDLCK, 5, 1), R("getlk", 1, fcntl.F_RDLCK, 5, 1), R("getlk", 1, fcntl.F_WRLCK, 10, 5),
        R("lock", 1, fcntl.F_WRLCK, 10, 0), R("lock", 0, fcntl.F_UNLCK, 0, 5), R("lock", 1, fcntl.F_RDLCK, 0, 5),
        R("getlk", 0, fcntl.F_WRLCK, 0, 0), R("close", 0), R("lock", 1, fcntl.F_WRLCK, 0, 0),
        R("open", "f", RO, 0, 0), R("flock", 0, fcntl.LOCK_SH), R("flock", 1, fcntl.LOCK_SH),
        R("flock", 2, fcntl.LOCK_EX), R("open", "f", RW, 0, 2), R("flock", 2, fcntl.LOCK_EX),
        R("flock", 0, fcntl.LOCK_UN), R("flock", 1, fcntl.LOCK_UN), R("flock", 2, fcntl.LOCK_EX),
        R("close", 2), R("flock", 0, fcntl.LOCK_EX),
    ],
    "readdir_while_modifying": [
        R("mkdir", "d", 0o755), R("open", "d/a", WO | CREAT, 0o644, 0), R("open", "d", RO | O.O_DIRECTORY, 0, 1),
        R("listdir_fd", 1), R("open", "d/b", WO | CREAT, 0o644, 0), R("listdir_fd", 1), R("unlink", "d/a"),
        R("listdir_fd", 1), R("rename", "d/b", "d/c"), R("mkdir", "d/sub", 0o755), R("listdir_fd", 1),
        R("rmdir", "d/sub"), R("listdir_fd", 1),
    ],
    "killpriv_on_write": [
        R("open", "s", WO | CREAT, 0o644, 0), R("chown", "s", 1000, 1000), R("chmod", "s", 0o6755),
        R("open", "s", WO, 0, 1), R("write", 1, b"root writes"), R("lstat", "s"),
        U("open", "s", WO, 0, 0), U("write", 0, b"user writes"), U("fstat", 0),
        R("chmod", "s", 0o6755), U("truncate", "s", 1), U("lstat", "s"),
        R("chmod", "s", 0o6755), U("chown", "s", 1000, 1000), U("lstat", "s"),
        R("chmod", "s", 0o2745), U("open", "s", WO, 0, 0), U("write", 0, b"x"), U("fstat", 0),
    ],
    # chown(-1, -1) changes nothing but still clears setuid (and setgid with
    # group-exec) of a file, for root too; a setgid directory keeps its bit
    "chown_without_changes": [
        R("open", "c", WO | CREAT, 0o644, 0), R("close", 0), R("chmod", "c", 0o6755),
        R("chown", "c", -1, -1), R("lstat", "c"),
        R("chmod", "c", 0o6745), R("chown", "c", -1, -1), R("lstat", "c"),
        R("mkdir", "sd", 0o755), R("chmod", "sd", 0o2755), R("chown", "sd", -1, -1), R("lstat", "sd"),
        R("chown", "c", 1000, 1000), R("chmod", "c", 0o4755), U("chown", "c", -1, -1), U("lstat", "c"),
    ],
    # O_CREAT|O_TRUNC by a user: a file it makes keeps its setuid bit (there
    # was nothing to truncate); an existing setuid file of its own loses it
    "killpriv_on_open_truncate": [
        R("mkdir", "e", 0o777), R("chmod", "e", 0o777),
        U("open", "e/new", RO | CREAT | TRUNC, 0o4755, 0), U("fstat", 0), U("close", 0),
        U("open", "e/old", WO | CREAT, 0o4755, 0), U("close", 0),
        U("open", "e/old", WO | CREAT | TRUNC, 0o4755, 1), U("fstat", 1), U("close", 1),
    ],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus(sides, name):
    compare(sides, CORPUS[name])


def test_harness_agrees_with_itself(tmp_path):
    """Two plain directories give the same answers: the comparison is
    deterministic, so a difference found on the mount is ours."""
    roots = []
    for n in ("a", "b"):
        d = tempfile.mkdtemp(prefix="pyvfs-self-")
        os.chmod(d, 0o777)
        roots.append(d)
    try:
        for name, steps in CORPUS.items():
            want, got = run_sequence(roots[0], steps), run_sequence(roots[1], steps)
            assert want == got, name
            assert snapshot(roots[0]) == snapshot(roots[1]), name
            for d in roots:
                for e in os.listdir(d):
                    p = os.path.join(d, e)
                    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    finally:
        for d in roots:
            shutil.rmtree(d, ignore_errors=True)


# -- generated sequences -------------------------------------------------------------------
PATHS = ["f", "g", "d", "d/f", "d/e", "e", "e/f", "d/e/f"]
TARGETS = ["f", "d", "d/f", "missing", "l", "d/l"]
MODES = [0o644, 0o600, 0o755, 0o000, 0o4755, 0o2770, 0o1777, 0o444]
DATA = [b"", b"hello", b"\0" * 10 + b"z", b"x" * 5000, bytes(range(256)) * 300]
OFFSETS = [0, 3, 4096, 70000, 1 << 20]
ACCMODES = [RO, WO, RW]
EXTRA_FLAGS = [0, CREAT, CREAT | EXCL, TRUNC, APPEND, O.O_DIRECTORY, O.O_NOFOLLOW, CREAT | TRUNC,
               CREAT | APPEND, CREAT | O.O_NOFOLLOW]
XNAMES = ["user.a", "user.b"]
IDS = [0, 1000, -1]

slot = st.integers(0, SLOTS - 1)
path = st.sampled_from(PATHS)
mode = st.sampled_from(MODES)
ns_pair = st.tuples(st.sampled_from(EXPLICIT_NS), st.sampled_from(EXPLICIT_NS))

OPEN = st.tuples(st.just("open"), path, st.builds(lambda a, b: a | b, st.sampled_from(ACCMODES),
                                                 st.sampled_from(EXTRA_FLAGS)), mode, slot)
OP = st.one_of(
    OPEN, OPEN, OPEN,       # weights: most interesting things need an open file
    st.tuples(st.just("close"), slot),
    st.tuples(st.just("read"), slot, st.sampled_from([0, 1, 100, 100000])),
    st.tuples(st.just("write"), slot, st.sampled_from(DATA)),
    st.tuples(st.just("pread"), slot, st.sampled_from([1, 100, 100000]), st.sampled_from(OFFSETS)),
    st.tuples(st.just("pwrite"), slot, st.sampled_from(DATA), st.sampled_from(OFFSETS)),
    st.tuples(st.just("lseek"), slot, st.sampled_from(OFFSETS),
              st.sampled_from([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE])),
    st.tuples(st.just("ftruncate"), slot, st.sampled_from(OFFSETS)),
    st.tuples(st.just("fallocate"), slot, st.sampled_from([0, KEEP, PUNCH | KEEP]),
              st.sampled_from(OFFSETS), st.sampled_from([1, 4096, 10000])),
    st.tuples(st.just("fstat"), slot),
    st.tuples(st.just("tmpfile"), st.sampled_from([".", "d", "e"]), mode, slot),
    st.tuples(st.just("link_slot"), slot, path),
    st.tuples(st.just("lock"), slot, st.sampled_from([fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK]),
              st.sampled_from([0, 5, 100]), st.sampled_from([0, 1, 10])),
    st.tuples(st.just("flock"), slot, st.sampled_from([fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_UN])),
    st.tuples(st.just("listdir_fd"), slot),
    st.tuples(st.just("mkdir"), path, mode),
    st.tuples(st.just("rmdir"), path),
    st.tuples(st.just("unlink"), path),
    st.tuples(st.just("link"), path, path),
    st.tuples(st.just("symlink"), st.sampled_from(TARGETS), path),
    st.tuples(st.just("readlink"), path),
    st.tuples(st.just("rename"), path, path),
    st.tuples(st.just("rename2"), path, path, st.sampled_from([NOREPLACE, EXCHANGE])),
    st.tuples(st.just("chmod"), path, mode),
    st.tuples(st.just("chown"), path, st.sampled_from(IDS), st.sampled_from(IDS), st.booleans()),
    st.tuples(st.just("utime"), path, ns_pair, st.booleans()),
    st.tuples(st.just("truncate"), path, st.sampled_from(OFFSETS)),
    st.tuples(st.just("setxattr"), path, st.sampled_from(XNAMES), st.sampled_from([b"", b"v", b"w" * 300]),
              st.sampled_from([0, XC, XR]), st.booleans()),
    st.tuples(st.just("getxattr"), path, st.sampled_from(XNAMES), st.booleans()),
    st.tuples(st.just("listxattr"), path, st.booleans()),
    st.tuples(st.just("removexattr"), path, st.sampled_from(XNAMES), st.booleans()),
    st.tuples(st.just("mkfifo"), path, mode),
    st.tuples(st.just("listdir"), st.sampled_from(PATHS + ["."])),
    st.tuples(st.just("lstat"), path),
    st.tuples(st.just("stat"), path),
)

# every generated sequence starts from this small tree, so that most
# operations find something to act on
SETUP = [
    R("open", "f", RW | CREAT, 0o644, 0), R("write", 0, b"0123456789" * 100), R("mkdir", "d", 0o755),
    R("open", "d/f", RW | CREAT, 0o664, 1), R("pwrite", 1, b"data", 5000), R("symlink", "d/f", "g"),
    R("mkdir", "e", 0o777), R("chmod", "e", 0o777), R("setxattr", "f", "user.a", b"1", 0),
    R("open", "d", RO | O.O_DIRECTORY, 0, 2),
]

STEPS = st.lists(st.tuples(st.sampled_from(["root", "root", "root", "user"]), OP), min_size=1, max_size=30)


@pytest.mark.timeout(900)
@settings(max_examples=int(os.environ.get("PYVFS_DIFF_EXAMPLES", "100")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(steps=STEPS)
def test_generated_sequences(sides, steps):
    compare(sides, SETUP + steps)
