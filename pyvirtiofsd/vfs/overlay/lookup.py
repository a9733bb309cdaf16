"""Name lookup through the layers (fs/overlayfs/namei.c in spirit).

The upper layer first: a whiteout hides the name, a non-directory or an
opaque directory ends the search. Then the lower layers of the parent,
highest first: a whiteout or a change of file type ends it, a non-directory
ends it, an opaque directory ends it after itself. A directory that carries
a redirect (redirect_dir) continues in the lower layers at the path it
names instead of its own name.
"""
import stat

from .inode import OvlInode, xino


class Found:
    """The real objects behind one name: upper (handle, attr) or None, and
    [(Layer, handle, attr)] of the lowers that merge with it."""
    __slots__ = ("upper", "lowers", "opaque", "metacopy", "redirect", "consumed")

    def __init__(self, upper, lowers, opaque=False, metacopy=False, redirect=None):
        self.upper, self.lowers, self.opaque, self.metacopy = upper, lowers, opaque, metacopy
        self.redirect = redirect
        self.consumed = False         # its handles now belong to an inode

    def is_dir(self):
        return _is_dir(self.top_attr())

    def key(self):
        if self.lowers:
            return (self.lowers[0][0].index, self.lowers[0][1].key)
        return (0, self.upper[0].key)

    def top_attr(self):
        return self.upper[1] if self.upper else self.lowers[0][2]

    def release(self, ovl):
        if self.consumed:
            return
        self.consumed = True
        if self.upper:
            ovl.upper.forget(self.upper[0])
        for layer, h, _ in self.lowers:
            layer.forget(h)


def _is_dir(attr):
    return stat.S_ISDIR(attr.st_mode)


def resolve(ovl, parent, name):
    """-> Found, or None when the name is absent or whited out."""
    upper, redirect, metacopy = None, None, False
    if parent.upper is not None:
        r = ovl.upper.lookup(parent.upper, name)
        if r is not None:
            h, a = r
            if ovl.upper.is_whiteout(h, a):
                ovl.upper.forget(h)
                return None
            upper = r
            if _is_dir(a):
                if ovl.upper.is_opaque(h):
                    return Found(upper, [], opaque=True)
                redirect = ovl.upper.redirect(h)    # followed always, as redirect_dir=follow
            elif not (ovl.metacopy and ovl.upper.is_metacopy(h, a)):
                return Found(upper, [])
            else:
                metacopy = True
    lowers = _lower_stack(ovl, parent, name, redirect, upper[1] if upper else None)
    if upper is None and not lowers:
        return None
    return Found(upper, lowers, metacopy=metacopy, redirect=redirect)


def _lower_stack(ovl, parent, name, redirect, top):
    if redirect is not None and redirect.startswith(b"/"):
        starts = [(layer, None) for layer in ovl.lowers]
        path = [p for p in redirect.split(b"/") if p]
    else:
        starts = parent.lowers
        path = [redirect or name]
    out = []
    for layer, ph in starts:
        r = _walk(layer, ph, path)
        if r is None:
            continue
        h, a = r
        if layer.is_whiteout(h, a) or (top is not None and _is_dir(a) != _is_dir(top)):
            layer.forget(h)
            break
        out.append((layer, h, a))
        top = a
        if not _is_dir(a) or layer.is_opaque(h):
            break
    return out


def _walk(layer, start, path):
    """Look up a path of names from start (None: the layer's root)."""
    h = start if start is not None else layer.root()
    got = None
    for i, comp in enumerate(path):
        r = layer.lookup(h, comp)
        if got is not None:
            layer.forget(got[0])
        if r is None:
            return None
        got = r
        h = r[0]
        if i < len(path) - 1 and not _is_dir(r[1]):
            layer.forget(h)
            return None
    return got


def lower_positive(ovl, parent, name) -> bool:
    """Does some lower layer of parent show name? (Then removing or moving
    it away must leave a whiteout.)"""
    for layer, ph in parent.lowers:
        r = layer.lookup(ph, name)
        if r is None:
            continue
        layer.forget(r[0])
        return not layer.is_whiteout(*r)
    return False


def inode_for(ovl, parent, name, found):
    """The cached inode for found, or a new one. Consumes found's handles."""
    table = ovl.table
    assert not found.consumed
    found.consumed = True
    key = found.key()
    if found.lowers:
        layer, _, a = found.lowers[0]
        ino = xino(layer.index, a.st_ino)
    else:
        ino = found.upper[1].st_ino
    upper_h = found.upper[0] if found.upper else None
    inode = table.find(key, upper_h)
    if inode is not None:
        if inode.upper is None and upper_h is not None:
            inode.upper = upper_h
            table.index_upper(inode)
            upper_h = None
        if upper_h is not None:
            ovl.upper.forget(upper_h)
        for layer, h, _ in found.lowers:
            layer.forget(h)
        table.move(inode, parent, name)
        return inode
    attr = found.top_attr()
    lowers = [(layer, h) for layer, h, _ in found.lowers]
    inode = OvlInode(key, ino, stat.S_IFMT(attr.st_mode), upper_h, lowers, parent, name)
    inode.opaque, inode.metacopy = found.opaque, found.metacopy
    inode.lowerpath = lower_path(parent, name, found.redirect)
    table.add(inode)
    return inode


def lower_path(parent, name, redirect):
    """Where a directory's lowers are found, from the lower roots."""
    if redirect is not None and redirect.startswith(b"/"):
        return redirect.strip(b"/")
    comp = redirect or name
    return parent.lowerpath + b"/" + comp if parent.lowerpath else comp
