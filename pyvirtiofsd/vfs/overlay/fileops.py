"""Open files of the overlay: each is a file of one real layer.

Opening for writing (or with O_TRUNC) copies up first and opens the upper
file; a read-only open uses the topmost real file as it is. As with the
kernel, a descriptor opened read-only before a copy-up keeps reading the
lower file.
"""
import errno
import os

from ..backend import ROOT_CTX
from .copy_up import copy_up


class OvlFile:
    __slots__ = ("backend", "obj", "inode", "upper")

    def __init__(self, backend, obj, inode, upper):
        self.backend, self.obj, self.inode, self.upper = backend, obj, inode, upper


def wants_write(flags) -> bool:
    return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)


def open_file(ovl, ctx, inode, flags) -> OvlFile:
    if wants_write(flags):
        with ovl.table.lock:
            copy_up(ovl, inode)
    if inode.upper is not None and not inode.metacopy:
        b = ovl.upper.backend
        return OvlFile(b, b.open(ctx, inode.upper, flags), inode, True)
    layer, h = inode.lowers[0]
    return OvlFile(layer.backend, layer.backend.open(ROOT_CTX, h, flags), inode, False)


def copy_file_range(ctx, fin, off_in, fout, off_out, length, flags):
    if fin.backend is not fout.backend:
        raise OSError(errno.EXDEV, "copy across layers: the kernel falls back to splice")
    return fin.backend.copy_file_range(ctx, fin.obj, off_in, fout.obj, off_out, length, flags)
