"""Namespace changes on the merged view (fs/overlayfs/dir.c in spirit).

New names go to the upper layer, replacing a whiteout if one is there (a
directory made over a whiteout is opaque, so the lower one stays hidden).
Removing a name that a lower layer shows leaves a whiteout; a directory is
removed only when the merged view of it is empty. Files copy up before a
rename; a directory with lower parts is only renamed with redirect_dir
(else EXDEV, and userspace falls back to copying), recording where its
lower parts are in overlay.redirect.
"""
import errno
import os
import stat

from ..backend import RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, ROOT_CTX
from .copy_up import copy_up, link_up
from .lookup import lower_positive, resolve
from .readdir import names_of_found


def _err(code, msg):
    return OSError(code, msg)


def prepare_new_name(ovl, parent, name) -> bool:
    """The merged name must be free; the parent gets an upper copy and a
    whiteout at the name goes. -> True when there was a whiteout."""
    found = resolve(ovl, parent, name)
    if found is not None:
        found.release(ovl)
        raise _err(errno.EEXIST, "exists")
    copy_up(ovl, parent)
    r = ovl.upper.lookup(parent.upper, name)
    if r is None:
        return False
    ovl.upper.forget(r[0])
    ovl.upper.backend.unlink(ROOT_CTX, parent.upper, name)
    return True


def make_whiteout(ovl, parent_h, name):
    b = ovl.upper.backend
    try:
        h, _ = b.mknod(ROOT_CTX, parent_h, name, stat.S_IFCHR, 0)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        h = _xattr_whiteout(ovl, parent_h, name)
    ovl.upper.forget(h)


def _xattr_whiteout(ovl, parent_h, name):
    """Where the upper cannot mknod: an empty file marked overlay.whiteout,
    in a directory marked overlay.whiteouts (the kernel's xattr form)."""
    b = ovl.upper.backend
    h, _, f, _ = b.create(ROOT_CTX, parent_h, name, 0, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    b.release(ROOT_CTX, f)
    b.setxattr(ROOT_CTX, h, ovl.names.whiteout, b"y", 0)
    b.setxattr(ROOT_CTX, parent_h, ovl.names.whiteouts, b"y", 0)
    return h


def remove(ovl, parent, name, want_dir):
    """unlink / rmdir."""
    found = resolve(ovl, parent, name)
    if found is None:
        raise _err(errno.ENOENT, "no such entry")
    try:
        if found.is_dir() != want_dir:
            raise _err(errno.ENOTDIR if want_dir else errno.EISDIR, "wrong type")
        if want_dir and names_of_found(ovl, found):
            raise _err(errno.ENOTEMPTY, "directory not empty")
        copy_up(ovl, parent)
        _remove_found(ovl, parent, name, found)
    finally:
        found.release(ovl)


def _remove_found(ovl, parent, name, found):
    """Take name out of the merged view; a whiteout stays if a lower shows it."""
    whiteout = lower_positive(ovl, parent, name)
    if found.upper is None:
        make_whiteout(ovl, parent.upper, name)
        return
    b, work = ovl.upper.backend, ovl.work
    if not whiteout and not found.is_dir():
        b.unlink(ROOT_CTX, parent.upper, name)
        return
    # one rename takes the object (and whatever whiteouts a directory holds)
    # away and leaves the whiteout in its place
    tmp = work.tmpname()
    b.rename(ROOT_CTX, parent.upper, name, work.handle, tmp, RENAME_WHITEOUT if whiteout else 0)
    work.purge(tmp)


def rename(ovl, parent, name, newparent, newname, flags):
    if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
        raise _err(errno.EINVAL, "unsupported rename flags")
    src = resolve(ovl, parent, name)
    if src is None:
        raise _err(errno.ENOENT, "no such entry")
    dst = resolve(ovl, newparent, newname)
    try:
        if dst is not None and dst.key() == src.key():
            return                                  # the same object: nothing to do
        if flags & RENAME_EXCHANGE and dst is None:
            raise _err(errno.ENOENT, "nothing to exchange with")
        if flags & RENAME_NOREPLACE and dst is not None:
            raise _err(errno.EEXIST, "target exists")
        _check_dir_move(ovl, src)          # the kernel answers EXDEV first
        if flags & RENAME_EXCHANGE:
            _check_dir_move(ovl, dst)
        _check_replace(ovl, src, dst, flags)
        if flags & RENAME_EXCHANGE:
            _exchange(ovl, parent, name, src, newparent, newname, dst)
        else:
            _move(ovl, parent, name, src, newparent, newname, dst)
    finally:
        src.release(ovl)
        if dst is not None:
            dst.release(ovl)


def _check_replace(ovl, src, dst, flags):
    if dst is None or flags & RENAME_EXCHANGE:
        return
    if src.is_dir() and not dst.is_dir():
        raise _err(errno.ENOTDIR, "not a directory")
    if not src.is_dir() and dst.is_dir():
        raise _err(errno.EISDIR, "is a directory")
    if dst.is_dir() and names_of_found(ovl, dst):
        raise _err(errno.ENOTEMPTY, "directory not empty")


def _check_dir_move(ovl, found):
    if found.is_dir() and found.lowers and not ovl.redirect_dir:
        raise _err(errno.EXDEV, "directory with lower layers (redirect_dir is off)")


def _name_in_upper(ovl, inode, parent, name, found):
    """Copy the object at parent/name up (or link it up)."""
    copy_up(ovl, parent)
    if inode.upper is not None and found.upper is None and not inode.is_dir():
        link_up(ovl, inode, parent, name)
    else:
        copy_up(ovl, inode, meta_only=True)


def _move(ovl, parent, name, src, newparent, newname, dst):
    copy_up(ovl, newparent)
    if dst is not None and dst.is_dir():
        _remove_found(ovl, newparent, newname, dst)
    with ovl.inode_at(parent, name, src) as inode:
        _name_in_upper(ovl, inode, parent, name, src)
        _move_upper(ovl, inode, parent, name, src, newparent, newname)


def _move_upper(ovl, inode, parent, name, src, newparent, newname):
    b = ovl.upper.backend
    r = ovl.upper.lookup(newparent.upper, newname)
    if r is not None:
        ovl.upper.forget(r[0])
        if src.is_dir() and ovl.upper.is_whiteout(*r):
            b.unlink(ROOT_CTX, newparent.upper, newname)   # a directory cannot replace it
    if src.is_dir():
        _mark_moved_dir(ovl, inode, src, newparent)
    whiteout = lower_positive(ovl, parent, name)
    b.rename(ROOT_CTX, parent.upper, name, newparent.upper, newname, RENAME_WHITEOUT if whiteout else 0)
    with ovl.table.lock:
        ovl.table.move(inode, newparent, newname)


def _mark_moved_dir(ovl, inode, found, newparent):
    """A directory with lowers records where they are (redirect); one
    without, moving into a merged parent, must not merge there (opaque)."""
    b, names = ovl.upper.backend, ovl.names
    if found.lowers:
        want = _redirect_for(ovl, inode, newparent is inode.parent)
        if want is not None:
            b.setxattr(ROOT_CTX, inode.upper, names.redirect, want, 0)
    elif newparent.lowers and not found.opaque:
        b.setxattr(ROOT_CTX, inode.upper, names.opaque, b"y", 0)
        inode.opaque = True


def _redirect_for(ovl, inode, samedir):
    """The kernel's choice: keep a redirect that still holds, else the
    current name within the same parent, else the absolute lower path."""
    have = ovl.upper.redirect(inode.upper)
    if have is not None and (samedir or have.startswith(b"/")):
        return None
    return inode.name if samedir else b"/" + inode.lowerpath


def _exchange(ovl, parent, name, src, newparent, newname, dst):
    with ovl.inode_at(parent, name, src) as a, ovl.inode_at(newparent, newname, dst) as b:
        _name_in_upper(ovl, a, parent, name, src)
        _name_in_upper(ovl, b, newparent, newname, dst)
        for inode, found, into in ((a, src, newparent), (b, dst, parent)):
            if found.is_dir():
                _mark_moved_dir(ovl, inode, found, into)
        ovl.upper.backend.rename(ROOT_CTX, parent.upper, name, newparent.upper, newname, RENAME_EXCHANGE)
        ovl.table.move(a, newparent, newname)
        ovl.table.move(b, parent, name)
