"""Lower layers and raw-layer snapshots for the overlay tests.

Two lower layers (L1 over L2) with every overlay feature in them: merged
directories, a whiteout, an opaque directory, a type change between layers,
sparse files, xattrs, symlinks, owners. And a snapshot of a raw upper layer
that includes what overlayfs writes there: whiteouts, the opaque /
redirect / metacopy xattrs, copied-up metadata.
"""
import os
import stat

T1 = 1_000_000_000_123_456_789
OVERLAY_XATTRS = ("trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.overlay.metacopy",
                  "trusted.overlay.whiteout", "user.overlay.opaque", "user.overlay.whiteout")


def _file(path, data=b"", mode=0o644, uid=0, gid=0, at=None):
    with open(path, "wb") as f:
        if at is not None:
            f.seek(at)
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _dir(path, mode=0o755, uid=0, gid=0):
    os.mkdir(path)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def make_lowers(base, opaque_xattr="trusted.overlay.opaque"):
    """-> [L1, L2] (highest first) under base."""
    l1, l2 = os.path.join(base, "L1"), os.path.join(base, "L2")
    for d in (l1, l2):
        _dir(d)
    j = os.path.join
    _file(j(l2, "f"), b"lower f\n" * 100)
    _dir(j(l2, "d"))
    _file(j(l2, "d", "f"), b"data", 0o664, at=5000)
    _dir(j(l2, "d", "e"))
    _file(j(l2, "d", "e", "f"), b"deep")
    _file(j(l2, "d", "h"), b"hidden by L1")
    _dir(j(l2, "e"), 0o777)
    _file(j(l2, "e", "f"), b"user's", 0o644, 1000, 1000)
    os.symlink("d/f", j(l2, "g"))
    _dir(j(l2, "o"))
    _file(j(l2, "o", "hidden"), b"under opaque")
    _file(j(l2, "x"), b"xattr file", 0o4755)
    os.setxattr(j(l2, "x"), "user.a", b"1")
    _dir(j(l2, "t"))
    _file(j(l2, "t", "inner"), b"under a file")
    _file(j(l2, "big"), b"head", at=0)
    with open(j(l2, "big"), "r+b") as f:
        f.seek(3 << 20)
        f.write(b"tail")
    _dir(j(l1, "d"), 0o750)
    _file(j(l1, "d", "k"), b"from L1", 0o600, 1000, 0)
    os.mknod(j(l1, "d", "h"), stat.S_IFCHR | 0, 0)          # whiteout of L2's d/h
    _dir(j(l1, "o"))
    os.setxattr(j(l1, "o"), opaque_xattr, b"y")
    _file(j(l1, "o", "shown"), b"opaque dir's own")
    _file(j(l1, "t"), b"a file over a dir")
    os.utime(j(l1, "d"), ns=(T1, T1))
    return [l1, l2]


def raw_snapshot(root):
    """Everything overlayfs leaves in a raw layer, by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            s = os.lstat(full)
            # the kernel shares one whiteout inode (hard links): their nlink means nothing
            counted = not (stat.S_ISDIR(s.st_mode) or stat.S_ISCHR(s.st_mode))
            info = {"mode": stat.filemode(s.st_mode), "uid": s.st_uid, "gid": s.st_gid,
                    "nlink": s.st_nlink if counted else None}
            if stat.S_ISCHR(s.st_mode):
                info["rdev"] = s.st_rdev
            if stat.S_ISLNK(s.st_mode):
                info["target"] = os.readlink(full)
            else:
                info["xattrs"] = {n: os.getxattr(full, n) for n in sorted(os.listxattr(full))
                                  if n.startswith("user.") or n in OVERLAY_XATTRS}
            if stat.S_ISREG(s.st_mode):
                with open(full, "rb") as f:
                    info["data"] = f.read()
            out[os.path.relpath(full, root)] = info
    return out
