"""One layer of an overlay: a Backend plus what overlayfs reads from it.

Knows the on-disk conventions (whiteouts, opaque directories, the private
xattr namespace) and keeps a per-layer negative lookup cache. Lower layers
are read-only by contract (as with the kernel, changing them under a live
overlay is undefined), so their negative entries stay valid until
`invalidate()`; the upper layer is never cached.
"""
import errno
import stat
from collections import OrderedDict

from ..backend import ROOT_CTX

NEG_CACHE_MAX = 65536


class XattrNames:
    """The overlay's private xattr names: trusted.overlay.* or, with the
    userxattr option, user.overlay.* (as the kernel's userxattr)."""

    def __init__(self, userxattr=False):
        self.prefix = b"user.overlay." if userxattr else b"trusted.overlay."
        self.opaque = self.prefix + b"opaque"
        self.whiteout = self.prefix + b"whiteout"
        self.whiteouts = self.prefix + b"whiteouts"
        self.redirect = self.prefix + b"redirect"
        self.metacopy = self.prefix + b"metacopy"

    def private(self, name: bytes) -> bool:
        return name.startswith(self.prefix)


class Layer:
    def __init__(self, backend, index: int, names: XattrNames, cache=True):
        self.backend, self.index, self.names = backend, index, names
        self.cache = cache
        self._neg = OrderedDict()          # (parent key, name) -> True
        self.neg_hits = self.lookups = 0

    def __repr__(self):
        return f"Layer({self.index}, {type(self.backend).__name__})"

    def root(self):
        return self.backend.root()

    def lookup(self, parent, name):
        """-> (handle, Attr) or None when absent (ENOENT)."""
        key = (parent.key, name)
        if self.cache and key in self._neg:
            self.neg_hits += 1
            return None
        self.lookups += 1
        try:
            return self.backend.lookup(ROOT_CTX, parent, name)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
        if self.cache:
            self._neg[key] = True
            if len(self._neg) > NEG_CACHE_MAX:
                self._neg.popitem(last=False)
        return None

    def invalidate(self, parent=None, name=None):
        """Forget negative entries (all, or one name)."""
        if parent is None:
            self._neg.clear()
        else:
            self._neg.pop((parent.key, name), None)

    def forget(self, handle):
        self.backend.forget(handle)

    def getxattr(self, handle, name):
        try:
            return self.backend.getxattr(ROOT_CTX, handle, name)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM):
                return None
            raise

    def is_whiteout(self, handle, attr) -> bool:
        if stat.S_ISCHR(attr.st_mode) and attr.st_rdev == 0:
            return True
        # the xattr form: an empty regular file marked overlay.whiteout
        return (stat.S_ISREG(attr.st_mode) and attr.st_size == 0
                and self.getxattr(handle, self.names.whiteout) is not None)

    def is_opaque(self, handle) -> bool:
        return self.getxattr(handle, self.names.opaque) == b"y"

    def redirect(self, handle):
        return self.getxattr(handle, self.names.redirect)

    def is_metacopy(self, handle, attr) -> bool:
        return stat.S_ISREG(attr.st_mode) and self.getxattr(handle, self.names.metacopy) is not None
