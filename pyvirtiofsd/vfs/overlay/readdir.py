"""Merged directory listings (fs/overlayfs/readdir.c in spirit).

The union of the directory's layers, upper first: a name is listed once,
from the highest layer that has it; whiteouts hide the name in the layers
below and are never listed. The listing is taken at opendir (and again at
a rewind to offset 0), so cookies are indexes into one snapshot and stay
stable across READDIR calls.
"""
import os
import stat

from ..backend import ROOT_CTX, DirEntry
from .inode import xino

DT_DIR = stat.S_IFDIR >> 12
DT_CHR = stat.S_IFCHR >> 12
DT_REG = stat.S_IFREG >> 12


class MergedDir:
    __slots__ = ("inode", "entries")

    def __init__(self, inode):
        self.inode, self.entries = inode, None


def layers_of(ovl, inode):
    out = [(ovl.upper, inode.upper)] if inode.upper is not None else []
    return out + list(inode.lowers)


def merged_names(ovl, inode):
    """[(name, ino, dtype)] of the merged directory, upper first."""
    return _merge(layers_of(ovl, inode))


def names_of_found(ovl, found):
    """merged_names of a directory found by lookup (no inode made)."""
    layers = [(ovl.upper, found.upper[0])] if found.upper else []
    return _merge(layers + [(layer, h) for layer, h, _ in found.lowers])


def _merge(layers):
    seen, out = set(), []
    for layer, h in layers:
        xattr_whiteouts = _may_have_xattr_whiteouts(layer, h)
        for e in _real_entries(layer, h):
            if e.name in seen:
                continue
            seen.add(e.name)
            if _whiteout(layer, h, e, xattr_whiteouts):
                continue
            out.append((e.name, xino(layer.index, e.ino), e.type))
    return out


def _real_entries(layer, h):
    b = layer.backend
    d = b.opendir(ROOT_CTX, h, os.O_RDONLY)
    try:
        return [e for e in b.readdir(ROOT_CTX, d, 0) if e.name not in (b".", b"..")]
    finally:
        b.releasedir(ROOT_CTX, d)


def _may_have_xattr_whiteouts(layer, h):
    return (layer.getxattr(h, layer.names.whiteouts) is not None
            or layer.getxattr(h, layer.names.opaque) == b"x")


def _whiteout(layer, h, e, xattr_whiteouts):
    if e.type == DT_CHR or (xattr_whiteouts and e.type == DT_REG):
        r = layer.lookup(h, e.name)
        if r is not None:
            layer.forget(r[0])
            return layer.is_whiteout(*r)
    return False


def readdir(ovl, d, offset):
    if d.entries is None or offset == 0:
        d.entries = _snapshot(ovl, d.inode)
    return iter(d.entries[offset:])


def _snapshot(ovl, inode):
    parent = inode.parent or inode
    out = [DirEntry(b".", inode.ino, DT_DIR, 1), DirEntry(b"..", parent.ino, DT_DIR, 2)]
    for name, ino, dtype in merged_names(ovl, inode):
        out.append(DirEntry(name, ino, dtype, len(out) + 1))
    return out
