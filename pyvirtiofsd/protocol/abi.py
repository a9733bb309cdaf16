"""FUSE wire format (linux/fuse.h, protocol 7.38): opcodes, flags and
precompiled little-endian struct layouts, kept in this one place."""
import struct

KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 38
ROOT_ID = 1

# opcodes
LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
GETLK = 31
SETLK = 32
SETLKW = 33
ACCESS = 34
CREATE = 35
INTERRUPT = 36
BMAP = 37
DESTROY = 38
IOCTL = 39
POLL = 40
NOTIFY_REPLY = 41
BATCH_FORGET = 42
FALLOCATE = 43
READDIRPLUS = 44
RENAME2 = 45
LSEEK = 46
COPY_FILE_RANGE = 47
SETUPMAPPING = 48
REMOVEMAPPING = 49
SYNCFS = 50
TMPFILE = 51

OPCODE_NAMES = {v: k for k, v in globals().items()
                if k.isupper() and isinstance(v, int) and 0 < v < 100
                and k not in ("KERNEL_VERSION", "KERNEL_MINOR_VERSION", "ROOT_ID")}

# setattr valid bits
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# open reply flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6

# INIT flags (flags | flags2 << 32)
ASYNC_READ = 1 << 0
POSIX_LOCKS = 1 << 1
FILE_OPS = 1 << 2
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
SPLICE_WRITE = 1 << 7
SPLICE_MOVE = 1 << 8
SPLICE_READ = 1 << 9
FLOCK_LOCKS = 1 << 10
HAS_IOCTL_DIR = 1 << 11
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
NO_OPEN_SUPPORT = 1 << 17
PARALLEL_DIROPS = 1 << 18
HANDLE_KILLPRIV = 1 << 19
POSIX_ACL = 1 << 20
ABORT_ERROR = 1 << 21
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
EXPLICIT_INVAL_DATA = 1 << 25
MAP_ALIGNMENT = 1 << 26
SUBMOUNTS = 1 << 27
HANDLE_KILLPRIV_V2 = 1 << 28
SETXATTR_EXT = 1 << 29
INIT_EXT = 1 << 30
INIT_RESERVED = 1 << 31
SECURITY_CTX = 1 << 32
HAS_INODE_DAX = 1 << 33

INIT_FLAG_NAMES = {
    v: k for k, v in globals().items()
    if k.isupper() and isinstance(v, int) and v > 0 and (v & (v - 1)) == 0
    and k in {
        "ASYNC_READ", "POSIX_LOCKS", "FILE_OPS", "ATOMIC_O_TRUNC", "EXPORT_SUPPORT",
        "BIG_WRITES", "DONT_MASK", "SPLICE_WRITE", "SPLICE_MOVE", "SPLICE_READ",
        "FLOCK_LOCKS", "HAS_IOCTL_DIR", "AUTO_INVAL_DATA", "DO_READDIRPLUS",
        "READDIRPLUS_AUTO", "ASYNC_DIO", "WRITEBACK_CACHE", "NO_OPEN_SUPPORT",
        "PARALLEL_DIROPS", "HANDLE_KILLPRIV", "POSIX_ACL", "ABORT_ERROR", "MAX_PAGES",
        "CACHE_SYMLINKS", "NO_OPENDIR_SUPPORT", "EXPLICIT_INVAL_DATA", "MAP_ALIGNMENT",
        "SUBMOUNTS", "HANDLE_KILLPRIV_V2", "SETXATTR_EXT", "INIT_EXT", "INIT_RESERVED",
        "SECURITY_CTX", "HAS_INODE_DAX"}
}

# misc request flags
RELEASE_FLUSH = 1 << 0
RELEASE_FLOCK_UNLOCK = 1 << 1
GETATTR_FH = 1 << 0
LK_FLOCK = 1 << 0
WRITE_CACHE = 1 << 0
WRITE_LOCKOWNER = 1 << 1
WRITE_KILL_SUIDGID = 1 << 2
READ_LOCKOWNER = 1 << 1
FSYNC_FDATASYNC = 1 << 0
OPEN_KILL_SUIDGID = 1 << 0
SETXATTR_ACL_KILL_SGID = 1 << 0
ATTR_SUBMOUNT = 1 << 0

# rename2 flags (linux/fs.h)
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

MIN_READ_BUFFER = 8192
COMPAT_ENTRY_OUT_SIZE = 120
COMPAT_ATTR_OUT_SIZE = 96
COMPAT_MKNOD_IN_SIZE = 8
COMPAT_WRITE_IN_SIZE = 24
COMPAT_SETXATTR_IN_SIZE = 8
COMPAT_INIT_OUT_SIZE = 8
COMPAT_22_INIT_OUT_SIZE = 24

# struct layouts ------------------------------------------------------------
IN_HEADER = struct.Struct("<IIQQIIIHH")          # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")               # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")        # ino size blocks atime mtime ctime {a,m,c}timensec mode nlink uid gid rdev blksize flags
ENTRY_HEAD = struct.Struct("<QQQQII")            # nodeid generation entry_valid attr_valid entry_nsec attr_nsec
ATTR_HEAD = struct.Struct("<QII")                # attr_valid attr_valid_nsec dummy
ENTRY_OUT = struct.Struct(ENTRY_HEAD.format + ATTR.format[1:])     # head + attr
ATTR_OUT = struct.Struct(ATTR_HEAD.format + ATTR.format[1:])
FORGET_IN = struct.Struct("<Q")
FORGET_ONE = struct.Struct("<QQ")
BATCH_FORGET_IN = struct.Struct("<II")
GETATTR_IN = struct.Struct("<IIQ")
MKNOD_IN = struct.Struct("<IIII")                # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")                  # mode umask
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
LINK_IN = struct.Struct("<Q")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")  # valid pad fh size lock_owner atime mtime ctime {a,m,c}nsec mode unused4 uid gid unused5
OPEN_IN = struct.Struct("<II")                   # flags open_flags
CREATE_IN = struct.Struct("<IIII")               # flags mode umask open_flags
OPEN_OUT = struct.Struct("<QII")                 # fh open_flags padding
RELEASE_IN = struct.Struct("<QIIQ")              # fh flags release_flags lock_owner
FLUSH_IN = struct.Struct("<QIIQ")                # fh unused padding lock_owner
READ_IN = struct.Struct("<QQIIQII")              # fh offset size read_flags lock_owner flags padding
WRITE_IN = struct.Struct("<QQIIQII")             # fh offset size write_flags lock_owner flags padding
WRITE_OUT = struct.Struct("<II")
KSTATFS = struct.Struct("<QQQQQIIII24x")         # blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
FSYNC_IN = struct.Struct("<QII")
SETXATTR_IN = struct.Struct("<IIII")             # size flags setxattr_flags padding
GETXATTR_IN = struct.Struct("<II")
GETXATTR_OUT = struct.Struct("<II")
FILE_LOCK = struct.Struct("<QQII")               # start end type pid
LK_IN = struct.Struct("<QQQQIIII")               # fh owner lk(start end type pid) lk_flags padding
LK_OUT = FILE_LOCK
ACCESS_IN = struct.Struct("<II")
INIT_IN_COMPAT = struct.Struct("<IIII")          # major minor max_readahead flags
INIT_IN_EXT = struct.Struct("<IIIII44x")         # + flags2 unused[11]
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")      # major minor max_readahead flags max_bg congestion max_write time_gran max_pages map_align flags2 unused[7]
INTERRUPT_IN = struct.Struct("<Q")
IOCTL_IN = struct.Struct("<QIIQII")
IOCTL_OUT = struct.Struct("<iIII")
POLL_IN = struct.Struct("<QQII")
POLL_OUT = struct.Struct("<II")
FALLOCATE_IN = struct.Struct("<QQQII")
DIRENT = struct.Struct("<QQII")                  # ino off namelen type
LSEEK_IN = struct.Struct("<QQII")
LSEEK_OUT = struct.Struct("<Q")
COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")   # fh_in off_in nodeid_out fh_out off_out len flags
SECCTX_HEADER = struct.Struct("<II")             # size nr_secctx
SECCTX = struct.Struct("<II")                    # size padding
EXT_HEADER = struct.Struct("<II")                # size type
U32 = struct.Struct("<I")
MAX_NR_SECCTX = 31                               # extension types 0..31 are secctx headers

assert IN_HEADER.size == 40 and OUT_HEADER.size == 16 and ATTR.size == 88
assert ENTRY_OUT.size == 128 and ATTR_OUT.size == 104 and SETATTR_IN.size == 88
assert INIT_OUT.size == 64 and INIT_IN_EXT.size == 64 and KSTATFS.size == 80
assert READ_IN.size == 40 and WRITE_IN.size == 40 and LK_IN.size == 48


_DIRENT_FIXED = DIRENT.size + 7                       # (with the 7 of the rounding up)
_DIRENTPLUS_FIXED = ENTRY_OUT.size + DIRENT.size + 7


def dirent_size(namelen: int, plus: bool = False) -> int:
    """Size of one packed (plus) dirent, 8-byte aligned."""
    return ((_DIRENTPLUS_FIXED if plus else _DIRENT_FIXED) + namelen) & -8
