"""The work directory: where copy-ups and removals are staged so that the
upper layer only ever changes by one rename.

Host upper: WORKDIR/work (the kernel's layout, so the same workdir serves a
kernel mount later), on the upper's file system. Memory upper: a directory
inode that no name reaches. Whatever a crash left in it is removed at start,
as the kernel does at mount.
"""
import errno
import itertools
import os
import stat

from ..backend import ROOT_CTX
from ..backends.host import O_PATH_FLAGS, HostBackend, HostInode
from ..backends.memory import MemoryBackend


def default_workdir(upper_dir: str) -> str:
    upper_dir = os.path.realpath(upper_dir)
    return os.path.join(os.path.dirname(upper_dir), "." + os.path.basename(upper_dir) + ".ovl-work")


def _host_work_handle(backend, workdir):
    work = os.path.join(workdir, "work")
    os.makedirs(work, mode=0o700, exist_ok=True)
    fd = os.open(work, O_PATH_FLAGS | os.O_DIRECTORY)
    st = os.fstat(fd)
    if st.st_dev != os.stat(backend.root_dir).st_dev:
        os.close(fd)
        raise ValueError(f"overlay workdir {workdir} must be on the upper's file system")
    real = os.path.realpath(work)
    if real == backend.root_dir or real.startswith(backend.root_dir + "/"):
        os.close(fd)
        raise ValueError("overlay workdir must not be inside the upper directory")
    return HostInode(fd, st)


def _memory_work_handle(backend):
    # a directory of the same tree that has no name: renames to and from it work
    with backend._lock:
        d = backend._new(stat.S_IFDIR | 0o700, 0, 0)
        d.parent = backend.root()
    return d


class WorkArea:
    def __init__(self, upper_layer, workdir=None):
        self.layer = upper_layer
        backend = upper_layer.backend
        if isinstance(backend, HostBackend):
            self.handle = _host_work_handle(backend, workdir or default_workdir(backend.root_dir))
        elif isinstance(backend, MemoryBackend):
            self.handle = _memory_work_handle(backend)
        else:
            raise ValueError(f"no work directory for a {type(backend).__name__} upper")
        self._names = itertools.count(1)
        self.clean()

    def close(self):
        self.layer.forget(self.handle)

    def tmpname(self) -> bytes:
        return b"#%x.%d" % (next(self._names), os.getpid())

    def clean(self):
        for name in self.names_in(self.handle):
            self.purge(name)

    def names_in(self, h):
        b = self.layer.backend
        d = b.opendir(ROOT_CTX, h, os.O_RDONLY)
        try:
            return [e.name for e in b.readdir(ROOT_CTX, d, 0) if e.name not in (b".", b"..")]
        finally:
            b.releasedir(ROOT_CTX, d)

    def purge(self, name, parent=None):
        """Remove work/name (a whole tree)."""
        b = self.layer.backend
        parent = parent or self.handle
        try:
            h, a = b.lookup(ROOT_CTX, parent, name)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return
            raise
        try:
            if stat.S_ISDIR(a.st_mode):
                for n in self.names_in(h):
                    self.purge(n, h)
                b.rmdir(ROOT_CTX, parent, name)
            else:
                b.unlink(ROOT_CTX, parent, name)
        finally:
            b.forget(h)
