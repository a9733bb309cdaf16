"""Copy-up (fs/overlayfs/copy_up.c in spirit): give a lower object an
upper copy before anything changes it.

The copy is built under a temporary name in the work directory — data
(holes stay holes), xattrs, owner, mode, times — and then renamed into the
upper parent in one step, so a crash never leaves a half-copied file
visible; what a crash leaves in the work directory is removed at start.
Parent directories are copied up first. With metacopy, a metadata change
copies only metadata: a sparse upper file of the right size marked
overlay.metacopy, whose data still comes from the lower file until the
first open for writing.
"""
import errno
import os
import stat

from ..backend import ROOT_CTX, SetAttr

CHUNK = 1 << 20


def copy_up(ovl, inode, meta_only=False):
    """Make sure inode has an upper object (with its data unless meta_only)."""
    if inode.upper is not None:
        if inode.metacopy and not meta_only:
            _copy_up_data(ovl, inode)
        return
    parent = inode.parent
    copy_up(ovl, parent)
    layer, lh = inode.lowers[0]
    attr = layer.backend.getattr(ROOT_CTX, lh)
    meta_only = meta_only and ovl.metacopy and stat.S_ISREG(attr.st_mode)
    ptimes = ovl.upper.backend.getattr(ROOT_CTX, parent.upper)
    uh = _stage(ovl, layer, lh, attr, inode.name, meta_only, parent.upper)
    inode.upper, inode.metacopy = uh, meta_only
    ovl.table.index_upper(inode)
    _set_times(ovl, parent.upper, ptimes)        # a copy-up is no change of the parent


def _stage(ovl, layer, lh, attr, name, meta_only, upper_parent):
    work, ub = ovl.work, ovl.upper.backend
    tmp = work.tmpname()
    try:
        uh = _create_copy(ovl, layer, lh, attr, tmp, meta_only)
        _copy_xattrs(ovl, layer, lh, uh)
        if meta_only:
            ub.setxattr(ROOT_CTX, uh, ovl.names.metacopy, b"", 0)
        _copy_attrs(ovl, uh, attr)
        ub.rename(ROOT_CTX, work.handle, tmp, upper_parent, name, 0)
    except BaseException:
        work.purge(tmp)
        raise
    return uh


def _create_copy(ovl, layer, lh, attr, tmp, meta_only):
    ub, work = ovl.upper.backend, ovl.work.handle
    ftype = stat.S_IFMT(attr.st_mode)
    if ftype == stat.S_IFDIR:
        return ub.mkdir(ROOT_CTX, work, tmp, 0o700)[0]
    if ftype == stat.S_IFLNK:
        return ub.symlink(ROOT_CTX, work, tmp, layer.backend.readlink(ROOT_CTX, lh))[0]
    if ftype != stat.S_IFREG:
        return ub.mknod(ROOT_CTX, work, tmp, ftype | 0o600, attr.st_rdev)[0]
    uh, _, uf, _ = ub.create(ROOT_CTX, work, tmp, 0o600, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        if not meta_only:
            copy_data(layer.backend, lh, ub, uf, attr.st_size)
        ub.setattr(ROOT_CTX, uh, uf, SetAttr(size=attr.st_size))
    finally:
        ub.release(ROOT_CTX, uf)
    return uh


def copy_data(src_backend, sh, dst_backend, df, size):
    """Copy the data ranges of a file; holes are skipped (left as holes)."""
    sf = src_backend.open(ROOT_CTX, sh, os.O_RDONLY)
    try:
        for start, end in _data_ranges(src_backend, sf, size):
            pos = start
            while pos < end:
                buf = bytearray(min(CHUNK, end - pos))
                n = src_backend.read(ROOT_CTX, sf, pos, [memoryview(buf)])
                if n <= 0:
                    break
                dst_backend.write(ROOT_CTX, df, pos, [memoryview(buf)[:n]])
                pos += n
    finally:
        src_backend.release(ROOT_CTX, sf)


def _data_ranges(backend, f, size):
    pos = 0
    while pos < size:
        try:
            start = backend.lseek(ROOT_CTX, f, pos, os.SEEK_DATA)
            end = backend.lseek(ROOT_CTX, f, start, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return                         # only a hole is left
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            start, end = pos, size             # no hole information: copy it all
        yield start, min(end, size)
        pos = end


def _copy_xattrs(ovl, layer, lh, uh):
    try:
        names = layer.backend.listxattr(ROOT_CTX, lh)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
            return
        raise
    for name in names:
        if ovl.names.private(name):
            continue
        value = layer.getxattr(lh, name)
        if value is not None:
            ovl.upper.backend.setxattr(ROOT_CTX, uh, name, value, 0)


def _copy_attrs(ovl, uh, attr):
    ub = ovl.upper.backend
    # owner before mode: a chown clears setuid/setgid
    ub.setattr(ROOT_CTX, uh, None, SetAttr(uid=attr.st_uid, gid=attr.st_gid))
    if not stat.S_ISLNK(attr.st_mode):
        ub.setattr(ROOT_CTX, uh, None, SetAttr(mode=stat.S_IMODE(attr.st_mode)))
    _set_times(ovl, uh, attr)


def _set_times(ovl, uh, attr):
    ovl.upper.backend.setattr(ROOT_CTX, uh, None, SetAttr(atime=attr.st_atime_ns, mtime=attr.st_mtime_ns))


def _copy_up_data(ovl, inode):
    """A metacopy upper gets its data: staged in the work dir, then renamed
    over the metacopy file, so a crash leaves either one whole."""
    layer, lh = inode.lowers[0]
    ub = ovl.upper.backend
    attr = ub.getattr(ROOT_CTX, inode.upper)
    size = layer.backend.getattr(ROOT_CTX, lh).st_size
    tmp = ovl.work.tmpname()
    try:
        uh, _, uf, _ = ub.create(ROOT_CTX, ovl.work.handle, tmp, 0o600, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            copy_data(layer.backend, lh, ub, uf, min(size, attr.st_size))
            ub.setattr(ROOT_CTX, uh, uf, SetAttr(size=attr.st_size))
        finally:
            ub.release(ROOT_CTX, uf)
        _copy_xattrs(ovl, ovl.upper, inode.upper, uh)
        _copy_attrs(ovl, uh, attr)
        ub.rename(ROOT_CTX, ovl.work.handle, tmp, inode.parent.upper, inode.name, 0)
    except BaseException:
        ovl.work.purge(tmp)
        raise
    old = inode.upper
    ovl.table.by_upper.pop(old.key, None)
    ovl.upper.forget(old)
    inode.upper, inode.metacopy = uh, False
    ovl.table.index_upper(inode)


def link_up(ovl, inode, parent, name):
    """Give name in parent an upper entry for inode, whose upper copy already
    exists under another name (a hard link broken by copy-up stays one
    inode, as with the kernel's index)."""
    copy_up(ovl, parent)
    h, _ = ovl.upper.backend.link(ROOT_CTX, inode.upper, parent.upper, name)
    ovl.upper.forget(h)
