"""The memory backend starts from a host directory or a tarball: the tree
seen through our /dev/fuse mount equals the source (names, types, modes,
owners, mtimes, contents, symlink targets, hard links, xattrs)."""
import os
import stat
import subprocess

import fusemount
from pyvirtiofsd.vfs.backends.memory import MemoryBackend

fusemount.require_fuse()


def make_tree(root):
    os.makedirs(os.path.join(root, "a", "b"))
    with open(os.path.join(root, "a", "file"), "wb") as f:
        f.write(os.urandom(70000))
    os.chmod(os.path.join(root, "a", "file"), 0o4751)
    os.chown(os.path.join(root, "a", "file"), 1000, 2000)
    os.link(os.path.join(root, "a", "file"), os.path.join(root, "a", "b", "hard"))
    os.symlink("../file", os.path.join(root, "a", "b", "link"))
    os.symlink("/nowhere/at/all", os.path.join(root, "dangling"))
    os.mkfifo(os.path.join(root, "fifo"), 0o640)
    os.setxattr(os.path.join(root, "a", "file"), "user.tag", b"v1")
    os.utime(os.path.join(root, "a", "file"), ns=(1_000_000_000_000_000_000, 1_200_000_000_000_000_000))
    open(os.path.join(root, "empty"), "w").close()


def describe(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            item = [stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_nlink]
            if stat.S_ISREG(st.st_mode):
                item += [open(p, "rb").read(), st.st_mtime_ns // 10**9, sorted(os.listxattr(p))]
            elif stat.S_ISLNK(st.st_mode):
                item.append(os.readlink(p))
            out[rel] = item
    return out


def test_prefill_from_directory_and_tarball(tmp_path):
    src = tmp_path / "src"
    make_tree(str(src))
    tarball = tmp_path / "tree.tar"
    subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-C", str(src), "-cf", str(tarball), "."],
                   check=True)
    want = describe(str(src))
    for source in (str(src), str(tarball)):
        with fusemount.mounted(MemoryBackend(prefill=source)) as mnt:
            assert describe(mnt) == want, source
            assert os.getxattr(os.path.join(mnt, "a", "file"), "user.tag") == b"v1"
