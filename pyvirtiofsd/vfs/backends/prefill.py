"""Fill a MemoryBackend from a host directory or a tarball: contents, modes,
owners, times, symlinks, hard links and xattrs (device nodes only where the
backend allows them; a 0/0 character device, the overlay whiteout, always).

Works on the backend's tree directly (as root, before any request), so no
permission rule or time update of the request path applies.
"""
import os
import stat
import tarfile

TAR_TYPES = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK, tarfile.FIFOTYPE: stat.S_IFIFO,
             tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK}


def prefill(backend, src):
    with backend._lock:
        if os.path.isfile(src):
            _from_tar(backend, src)
        else:
            _from_dir(backend, src)


def _device_refused(backend, mode, rdev):
    return (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and rdev != 0 and not backend.allow_devices


def _set_data(backend, node, data):
    backend._write_at(node, 0, [memoryview(data)])


def _set_times(node, atime, mtime, ctime):
    node.atime, node.mtime, node.ctime = atime, mtime, ctime


def _from_dir(backend, src):
    seen = {}                                    # (dev, ino) -> Inode, for hard links

    def copy(dirpath, into):
        for entry in os.scandir(dirpath):
            st = entry.stat(follow_symlinks=False)
            name = os.fsencode(entry.name)
            known = seen.get((st.st_dev, st.st_ino))
            if known is not None:
                backend._add_link(into, name, known)
                continue
            if _device_refused(backend, st.st_mode, st.st_rdev):
                continue
            node = backend._new(st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
            seen[(st.st_dev, st.st_ino)] = node
            backend._insert(into, name, node)
            if entry.is_symlink():
                backend._set_target(node, os.fsencode(os.readlink(entry.path)))
            elif entry.is_dir(follow_symlinks=False):
                copy(entry.path, node)
            elif stat.S_ISREG(st.st_mode):
                with open(entry.path, "rb") as f:
                    _set_data(backend, node, f.read())
            for xname in os.listxattr(entry.path, follow_symlinks=False):
                backend._set_xattr(node, os.fsencode(xname),
                                   os.getxattr(entry.path, xname, follow_symlinks=False))
            _set_times(node, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)

    copy(src, backend._root)
    st = os.stat(src)
    root = backend._root
    root.mode, root.uid, root.gid = st.st_mode, st.st_uid, st.st_gid


def _from_tar(backend, path):
    with tarfile.open(path) as tar:
        for m in tar:
            parts = [os.fsencode(p) for p in m.name.strip("/").split("/") if p not in ("", ".")]
            if not parts or b".." in parts:
                continue
            parent = _tar_dirs(backend, parts[:-1])
            name, old = parts[-1], backend._child(parent, parts[-1])
            if old is not None and not (m.isdir() and old.is_dir()):
                backend._unlink_entry(parent, name)
                old = None
            if m.islnk():
                target = _tar_lookup(backend, m.linkname)
                if target is not None and not target.is_dir():
                    backend._add_link(parent, name, target)
                continue
            ftype = TAR_TYPES.get(m.type, stat.S_IFREG)
            rdev = os.makedev(m.devmajor, m.devminor) if m.isdev() else 0
            if _device_refused(backend, ftype, rdev):
                continue
            mode = ftype | (m.mode & 0o7777)
            node = old or backend._new(mode, m.uid, m.gid, rdev)
            node.mode, node.uid, node.gid = mode, m.uid, m.gid
            if old is None:
                backend._insert(parent, name, node)
            if m.issym():
                backend._set_target(node, os.fsencode(m.linkname))
            elif m.isfile():
                _set_data(backend, node, tar.extractfile(m).read())
            for key, value in m.pax_headers.items():
                if key.startswith("SCHILY.xattr."):
                    backend._set_xattr(node, os.fsencode(key[len("SCHILY.xattr."):]), os.fsencode(value))
            t = int(m.mtime * 1_000_000_000)
            _set_times(node, t, t, t)


def _tar_dirs(backend, parts):
    """The directory at parts, made (root-owned, 0755) where missing."""
    node = backend._root
    for p in parts:
        child = backend._child(node, p)
        if child is None:
            child = backend._new(stat.S_IFDIR | 0o755, 0, 0)
            backend._insert(node, p, child)
        node = child
    return node


def _tar_lookup(backend, path):
    node = backend._root
    for p in path.strip("/").split("/"):
        if p in ("", "."):
            continue
        node = backend._child(node, os.fsencode(p)) if node.is_dir() else None
        if node is None:
            return None
    return node
