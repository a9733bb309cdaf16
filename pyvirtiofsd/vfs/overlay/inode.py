"""Overlay inodes: the stack of real handles behind one merged object.

An inode's identity (``key``) is its origin: the topmost lower inode it was
found in, or its upper inode when it has no lower. It keeps that key (and so
its inode number, xino-style: layer index in the high bits, real inode
number below) across copy-up. The table also indexes inodes by their upper
inode, so a copied-up or renamed object found again is the same inode.

Reference counts: every handle given to the VFS pins its inode once (the VFS
forgets duplicate handles itself), and a cached inode pins its parent, whose
real directory handles a later copy-up walks through. At zero the inode
forgets its real handles.
"""
import stat
import threading

XINO_SHIFT = 48
XINO_MASK = (1 << XINO_SHIFT) - 1


def xino(layer_index: int, real_ino: int) -> int:
    return (layer_index << XINO_SHIFT) | (real_ino & XINO_MASK)


class OvlInode:
    __slots__ = ("key", "ino", "ftype", "upper", "lowers", "parent", "name", "pins",
                 "opaque", "metacopy", "lowerpath")

    def __init__(self, key, ino, ftype, upper, lowers, parent, name):
        self.key, self.ino, self.ftype = key, ino, ftype
        self.upper = upper            # real upper handle, or None until copy-up
        self.lowers = lowers          # [(Layer, handle)]: merged dirs, or a non-dir's origin
        self.parent, self.name = parent, name
        self.pins = 0
        self.opaque = False
        self.metacopy = False         # upper holds metadata only; data is in lowers[0]
        self.lowerpath = b""          # path of its lowers from the lower roots (redirect_dir)

    def is_dir(self):
        return self.ftype == stat.S_IFDIR

    def __repr__(self):
        return f"OvlInode({self.name!r}, key={self.key}, upper={self.upper is not None}, lowers={len(self.lowers)})"


class OvlHandle:
    """What the VFS holds: one per reply, so forgets balance pins."""
    __slots__ = ("inode", "key")

    def __init__(self, inode):
        self.inode, self.key = inode, inode.key

    def __repr__(self):
        return f"OvlHandle({self.inode!r})"


class InodeTable:
    def __init__(self, upper_layer):
        self.upper = upper_layer
        self.lock = threading.RLock()
        self.by_key = {}
        self.by_upper = {}

    def handle(self, inode) -> OvlHandle:
        with self.lock:
            inode.pins += 1
            return OvlHandle(inode)

    def find(self, key, upper_handle):
        inode = self.by_upper.get(upper_handle.key) if upper_handle is not None else None
        return inode or self.by_key.get(key)

    def add(self, inode):
        self.by_key[inode.key] = inode
        self.index_upper(inode)
        if inode.parent is not None:
            inode.parent.pins += 1

    def index_upper(self, inode):
        if inode.upper is not None:
            self.by_upper[inode.upper.key] = inode

    def release_if_unused(self, inode):
        """Drop an inode only this backend looked at (no VFS handle, no children)."""
        with self.lock:
            if inode.pins == 0 and inode.parent is not None:
                inode.pins = 1
                self.unpin(inode)

    def move(self, inode, parent, name):
        """inode is now known under parent/name (lookup or rename)."""
        if inode.parent is not parent and inode.parent is not None:
            parent.pins += 1
            self.unpin(inode.parent)
        inode.parent, inode.name = parent, name

    def unpin(self, inode):
        while inode is not None:
            inode.pins -= 1
            if inode.pins > 0 or inode.parent is None:
                return
            self._drop(inode)
            inode = inode.parent

    def drop_all(self):
        """Unmount: every cached inode forgets its real handles."""
        for inode in list(self.by_key.values()) + list(self.by_upper.values()):
            if inode.pins >= 0:
                inode.pins = -1           # once each
                self._drop(inode)

    def _drop(self, inode):
        if self.by_key.get(inode.key) is inode:
            del self.by_key[inode.key]
        if inode.upper is not None:
            if self.by_upper.get(inode.upper.key) is inode:
                del self.by_upper[inode.upper.key]
            self.upper.forget(inode.upper)
        for layer, h in inode.lowers:
            layer.forget(h)
