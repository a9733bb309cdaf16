"""OverlayBackend: Linux overlayfs semantics over any Backends.

One writable upper layer over read-only lower layers (highest first, as
lowerdir=). Lookup, readdir, copy-up and namespace changes live in their
own modules; this class routes each Backend operation to them and to the
real layer that holds the object. Metadata operations hold one lock (they
change several layers' state together); file I/O goes straight to the real
file.
"""
import contextlib
import errno
import os
import stat
from dataclasses import replace

from ..backend import ROOT_CTX, Attr, Backend, Capabilities
from . import dirops, readdir
from .copy_up import copy_up
from .fileops import OvlFile, copy_file_range, open_file
from .inode import InodeTable, OvlHandle, OvlInode
from .layers import Layer, XattrNames
from .lookup import Found, inode_for, resolve
from .work import WorkArea

ROOT_PINS = 1 << 62


class OverlayBackend(Backend):
    def __init__(self, upper_backend, lower_backends, *, workdir=None, userxattr=False,
                 metacopy=False, redirect_dir=False, negative_cache=True):
        self.names = XattrNames(userxattr)
        self.upper = Layer(upper_backend, 0, self.names, cache=False)
        self.lowers = [Layer(b, i + 1, self.names, cache=negative_cache)
                       for i, b in enumerate(lower_backends)]
        self.metacopy, self.redirect_dir = metacopy, redirect_dir
        self.work = WorkArea(self.upper, workdir)
        self.table = InodeTable(self.upper)
        self.capabilities = replace(upper_backend.capabilities, rename_whiteout=False, readdir_at=False)
        self.consistency = upper_backend.consistency
        self._root = OvlHandle(self._make_root())

    def _make_root(self):
        uroot = self.upper.root()
        lowers = []
        if not self.upper.is_opaque(uroot):
            for layer in self.lowers:
                lowers.append((layer, layer.root()))
                if layer.is_opaque(layer.root()):
                    break
        attr = self.upper.backend.getattr(ROOT_CTX, uroot)
        root = OvlInode(("root",), attr.st_ino, stat.S_IFDIR, uroot, lowers, None, b"")
        root.pins = ROOT_PINS
        return root

    # -- helpers ------------------------------------------------------------------------
    @contextlib.contextmanager
    def inode_at(self, parent, name, found):
        """The inode of a name an operation works on, dropped afterwards
        unless the VFS holds it."""
        inode = inode_for(self, parent, name, found)
        try:
            yield inode
        finally:
            self.table.release_if_unused(inode)

    def _entry(self, inode):
        return self.table.handle(inode), self._attr(inode)

    def _new_entry(self, parent, name, real, opaque=False):
        h, a = real
        inode = inode_for(self, parent, name, Found((h, a), [], opaque=opaque))
        return self._entry(inode)

    def _attr(self, inode):
        if inode.upper is not None:
            real = self.upper.backend.getattr(ROOT_CTX, inode.upper)
        else:
            layer, h = inode.lowers[0]
            real = layer.backend.getattr(ROOT_CTX, h)
        a = Attr.from_stat(real)        # (a layer may give its own os.stat_result)
        a.st_ino = inode.ino
        merged = inode.lowers and (inode.upper is not None or len(inode.lowers) > 1)
        if inode.is_dir() and merged:
            a.st_nlink = 1         # as the kernel: subdirectories of merged dirs are not counted
        return a

    def _real(self, inode):
        """(backend, handle) of the topmost real object."""
        if inode.upper is not None:
            return self.upper.backend, inode.upper
        layer, h = inode.lowers[0]
        return layer.backend, h

    # -- inodes ---------------------------------------------------------------------------
    def root(self):
        return self._root

    def lookup(self, ctx, parent, name):
        with self.table.lock:
            found = resolve(self, parent.inode, name)
            if found is None:
                raise OSError(errno.ENOENT, "no such entry")
            return self._entry(inode_for(self, parent.inode, name, found))

    def forget(self, handle):
        if handle is not self._root:
            with self.table.lock:
                self.table.unpin(handle.inode)

    def getattr(self, ctx, h, file=None):
        with self.table.lock:
            return self._attr(h.inode)

    def setattr(self, ctx, h, file, changes):
        inode = h.inode
        with self.table.lock:
            copy_up(self, inode, meta_only=changes.size is None)
            real_file = file.obj if file is not None and file.upper else None
            self.upper.backend.setattr(ctx, inode.upper, real_file, changes)
            return self._attr(inode)

    def readlink(self, ctx, h):
        b, rh = self._real(h.inode)
        return b.readlink(ctx, rh)

    def access(self, ctx, h, mask):
        b, rh = self._real(h.inode)
        b.access(ctx, rh, mask)

    # -- namespace ----------------------------------------------------------------------------
    def _create_with(self, parent, name, make):
        with self.table.lock:
            parent = parent.inode
            was_whiteout = dirops.prepare_new_name(self, parent, name)
            return parent, was_whiteout, make(parent.upper)

    def mknod(self, ctx, parent, name, mode, rdev):
        p, _, real = self._create_with(parent, name,
                                       lambda uh: self.upper.backend.mknod(ctx, uh, name, mode, rdev))
        with self.table.lock:
            return self._new_entry(p, name, real)

    def mkdir(self, ctx, parent, name, mode):
        p, was_whiteout, real = self._create_with(parent, name,
                                                  lambda uh: self.upper.backend.mkdir(ctx, uh, name, mode))
        with self.table.lock:
            if was_whiteout:      # the lower directory stays hidden
                self.upper.backend.setxattr(ROOT_CTX, real[0], self.names.opaque, b"y", 0)
            return self._new_entry(p, name, real, opaque=was_whiteout)

    def symlink(self, ctx, parent, name, target):
        p, _, real = self._create_with(parent, name,
                                       lambda uh: self.upper.backend.symlink(ctx, uh, name, target))
        with self.table.lock:
            return self._new_entry(p, name, real)

    def link(self, ctx, h, newparent, newname):
        inode = h.inode
        if inode.is_dir():
            raise OSError(errno.EPERM, "hard link to a directory")
        with self.table.lock:
            copy_up(self, inode)
            _, _, (lh, _) = self._create_with(
                newparent, newname, lambda uh: self.upper.backend.link(ctx, inode.upper, uh, newname))
            self.upper.forget(lh)
            return self._entry(inode)

    def unlink(self, ctx, parent, name):
        with self.table.lock:
            dirops.remove(self, parent.inode, name, want_dir=False)

    def rmdir(self, ctx, parent, name):
        with self.table.lock:
            dirops.remove(self, parent.inode, name, want_dir=True)

    def rename(self, ctx, parent, name, newparent, newname, flags=0):
        with self.table.lock:
            dirops.rename(self, parent.inode, name, newparent.inode, newname, flags)

    # -- files ---------------------------------------------------------------------------------
    def open(self, ctx, h, flags):
        return open_file(self, ctx, h.inode, flags)

    def create(self, ctx, parent, name, mode, flags):
        with self.table.lock:
            found = resolve(self, parent.inode, name)
            if found is not None:
                if flags & os.O_EXCL:
                    found.release(self)
                    raise OSError(errno.EEXIST, "exists")
                handle, attr = self._entry(inode_for(self, parent.inode, name, found))
                return handle, attr, self.open(ctx, handle, flags), False
            p, _, (rh, ra, rf, _) = self._create_with(
                parent, name, lambda uh: self.upper.backend.create(ctx, uh, name, mode, flags))
            handle, attr = self._new_entry(p, name, (rh, ra))
            return handle, attr, OvlFile(self.upper.backend, rf, handle.inode, True), True

    def read(self, ctx, f, offset, views):
        return f.backend.read(ctx, f.obj, offset, views)

    def write(self, ctx, f, offset, views, kill_suidgid=False):
        return f.backend.write(ctx, f.obj, offset, views, kill_suidgid)

    def flush(self, ctx, f, lock_owner):
        f.backend.flush(ctx, f.obj, lock_owner)

    def fsync(self, ctx, f, datasync):
        f.backend.fsync(ctx, f.obj, datasync)

    def release(self, ctx, f):
        f.backend.release(ctx, f.obj)

    def fallocate(self, ctx, f, mode, offset, length):
        f.backend.fallocate(ctx, f.obj, mode, offset, length)

    def lseek(self, ctx, f, offset, whence):
        return f.backend.lseek(ctx, f.obj, offset, whence)

    def copy_file_range(self, ctx, fin, off_in, fout, off_out, length, flags):
        return copy_file_range(ctx, fin, off_in, fout, off_out, length, flags)

    # -- directories -----------------------------------------------------------------------------
    def opendir(self, ctx, h, flags):
        if not h.inode.is_dir():
            raise OSError(errno.ENOTDIR, "not a directory")
        return readdir.MergedDir(h.inode)

    def readdir(self, ctx, d, offset):
        with self.table.lock:
            return readdir.readdir(self, d, offset)

    # -- xattrs -------------------------------------------------------------------------------------
    def _own_xattr(self, name):
        if self.names.private(name):
            raise OSError(errno.EOPNOTSUPP, "the overlay's own xattrs are not exposed")

    def setxattr(self, ctx, h, name, value, flags):
        self._own_xattr(name)
        with self.table.lock:
            copy_up(self, h.inode, meta_only=True)
            self.upper.backend.setxattr(ctx, h.inode.upper, name, value, flags)

    def getxattr(self, ctx, h, name):
        self._own_xattr(name)
        b, rh = self._real(h.inode)
        return b.getxattr(ctx, rh, name)

    def listxattr(self, ctx, h):
        b, rh = self._real(h.inode)
        return [n for n in b.listxattr(ctx, rh) if not self.names.private(n)]

    def removexattr(self, ctx, h, name):
        self._own_xattr(name)
        with self.table.lock:
            if h.inode.upper is None:
                self.getxattr(ctx, h, name)     # ENODATA: nothing to remove, no copy-up
            copy_up(self, h.inode, meta_only=True)
            self.upper.backend.removexattr(ctx, h.inode.upper, name)

    # -- filesystem ------------------------------------------------------------------------------------
    def statfs(self, ctx, h):
        return self.upper.backend.statfs(ctx, self.upper.root())

    def syncfs(self, ctx):
        self.upper.backend.syncfs(ctx)

    def destroy(self):
        with self.table.lock:
            self.table.drop_all()
        self.work.close()
        for layer in [self.upper] + self.lowers:
            layer.backend.destroy()
