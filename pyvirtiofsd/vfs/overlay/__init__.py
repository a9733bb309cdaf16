"""Overlays of backends with Linux overlayfs semantics and on-disk format.

    build_overlay(upper_dir, [lower1, lower2])        # host directories
    OverlayBackend(upper_backend, [lower_backends])   # any backends

Modules by operation family: layers (one real layer: whiteouts, opaque,
negative lookup cache), inode (identity and references), lookup, readdir,
copy_up, work (the work directory), dirops (create/remove/rename), fileops.
"""
from .backend import OverlayBackend


def build_overlay(upper: str, lowers: list, *, workdir=None, userxattr=False, metacopy=False,
                  redirect_dir=False, xattr=True, allow_devices=False) -> OverlayBackend:
    """An overlay of host directories: lowers highest first, like lowerdir=."""
    from ..backends.host import HostBackend
    upper_b = HostBackend(upper, xattr=xattr, allow_devices=allow_devices)
    lower_bs = [HostBackend(d, xattr=xattr) for d in lowers]
    return OverlayBackend(upper_b, lower_bs, workdir=workdir, userxattr=userxattr,
                          metacopy=metacopy, redirect_dir=redirect_dir)


__all__ = ["OverlayBackend", "build_overlay"]
