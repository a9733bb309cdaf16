"""POSIX ACLs (--posix-acl): the same setfacl/create/permission sequence on a
host directory and on our /dev/fuse mount of another one gives the same
ACLs, modes and permission answers — default ACLs inherited, umask ignored
under a default ACL and applied elsewhere, named-user entries honoured."""
import os
import shutil
import subprocess
import tempfile

import pytest

import fusemount
from pyvirtiofsd.vfs.backends.host import HostBackend

fusemount.require_fuse()


def as_user(uid, fn):
    """Run fn() in a child with uid/gid; -> its errno name or 'ok'."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            fn()
            out = b"ok"
        except OSError as e:
            out = __import__("errno").errorcode[e.errno].encode()
        os.write(w, out)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    out = os.read(r, 100).decode()
    os.close(r)
    return out


def scenario(root):
    """-> everything observable, to compare between the two sides."""
    d = os.path.join(root, "d")
    os.mkdir(d, 0o755)
    subprocess.run(["setfacl", "-m", "u:1000:rwx,d:u:1000:rwx,d:g::r-x,d:o::---,d:m::rwx", d], check=True)
    os.mkdir(os.path.join(root, "plain"), 0o777)
    old = os.umask(0o022)
    try:
        os.close(os.open(os.path.join(d, "f"), os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir(os.path.join(d, "sub"), 0o777)
        os.close(os.open(os.path.join(root, "plain", "g"), os.O_CREAT | os.O_WRONLY, 0o666))
    finally:
        os.umask(old)
    results = {
        "user1000_creates": as_user(1000, lambda: os.close(os.open(os.path.join(d, "u"), os.O_CREAT | os.O_WRONLY, 0o600))),
        "user2000_denied": as_user(2000, lambda: os.close(os.open(os.path.join(d, "v"), os.O_CREAT | os.O_WRONLY, 0o600))),
        "user1000_writes_f": as_user(1000, lambda: os.close(os.open(os.path.join(d, "f"), os.O_WRONLY))),
    }
    os.chmod(os.path.join(d, "f"), 0o640)
    results["user1000_after_chmod"] = as_user(1000, lambda: os.close(os.open(os.path.join(d, "f"), os.O_WRONLY)))
    for rel in ("d", "d/f", "d/sub", "d/u", "plain/g"):
        p = os.path.join(root, rel)
        if os.path.exists(p):
            acl = subprocess.run(["getfacl", "-cpn", p], capture_output=True, text=True, check=True).stdout
            results[rel] = (oct(os.stat(p).st_mode), acl)
    return results


@pytest.fixture
def base():
    d = tempfile.mkdtemp(prefix="pyvfs-acl-")     # under /tmp: other users can reach it
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_posix_acls_behave_like_the_host(base):
    plain, backing = os.path.join(base, "plain"), os.path.join(base, "backing")
    for p in (plain, backing):
        os.mkdir(p, 0o755)
    want = scenario(plain)
    with fusemount.mounted(HostBackend(backing, posix_acl=True), threads=2) as mnt:
        os.chmod(mnt, 0o755)
        got = scenario(mnt)
    assert want["user1000_creates"] == "ok" and want["user2000_denied"] == "EACCES"
    assert "user:1000:rwx" in want["d/f"][1] and want["plain/g"][0] == oct(0o100644)
    assert got == want
