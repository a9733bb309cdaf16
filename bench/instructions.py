"""Instructions per request on the hot request path, counted by callgrind.

Time on these machines drifts by a third from one minute to the next, so
small changes to the request path cannot be judged by timing. Instruction
counts do not drift: this runs the queue worker's drain (take a chain, serve
it, push it, signal) over chains shaped as Linux builds them (an indirect
table: request header and argument readable, reply header and reply body
writable), for a few request kinds, under `valgrind --tool=callgrind`, twice
with different numbers of rounds; the difference divided by the extra
requests is the cost of one request, with start-up cancelled out. User-space
instructions only: the system calls' kernel side is not counted.

    python bench/instructions.py [getattr lookup read write read1m write1m ...]

Each request is counted twice: with its indirect table one the queue has
walked before (the same 64 tables come round again, as a guest reuses its
request structs and I/O buffers) and with one it has not (the queue forgets
the tables it walked before each drain).

read128k is a READ as readahead sends one at cache=auto or always: 128 KiB
in 32 pages of the guest's page cache, not adjacent, in a table not seen
before (since the C walk and guest buffers, some 37,000 instructions more
than its "table walked before" column, against 121,000 before).

read1m and write1m move 1 MiB in 256 pages that are not adjacent, as a
direct-I/O READ or WRITE of a guest process's buffer often arrives;
read1m_contig and write1m_contig in 256 adjacent pages, as it arrives as
often (half the 512 KiB WRITEs of a guest's sequential write were one
run of adjacent pages, the other half scattered).

Needs valgrind (apt install valgrind). In-process and hot: under a guest
each request also pays for waking the worker and for cold caches, which
this does not measure.
"""
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pyvirtiofsd.device import virtio_fs                          # noqa: E402
from pyvirtiofsd.device.memory import GuestMemory                 # noqa: E402
from pyvirtiofsd.device.virtqueue import F_INDIRECT, F_NEXT, F_WRITE, Virtqueue  # noqa: E402
from pyvirtiofsd.protocol import abi                               # noqa: E402
from pyvirtiofsd.protocol.server import FuseServer                # noqa: E402
from pyvirtiofsd.vfs.backend import ROOT_CTX                      # noqa: E402
from pyvirtiofsd.vfs.backends.host import HostBackend             # noqa: E402
from pyvirtiofsd.vfs.vfs import Vfs                               # noqa: E402

KINDS = ("getattr", "lookup", "lookup_missing", "read", "write", "read128k", "read1m", "write1m", "read1m_contig", "write1m_contig",
         "readdirplus", "readdirplus_new", "getxattr_missing", "setattr_times")
CHAINS = 64                     # chains published per round, served in one drain
BIG_CHAINS = 8                  # (for the 1 MiB kinds)
PAGE = 4096
ROUNDS = (5, 25)
MEM = 48 << 20
RING = 256
DESC = struct.Struct("<QIHH")


class _Device:
    log = None
    memory_lock = None

    def __init__(self, server):
        self.server = server

    def complete(self, vq, head, n):
        raise AssertionError("no request here waits")


def _requests(kind, nodeid, fh):
    """(readable parts, writable buffer sizes) of one request of this kind."""
    def header(opcode, node, body_len):
        return abi.IN_HEADER.pack(40 + body_len, opcode, 7, node, 0, 0, 0, 0, 0)
    if kind == "getattr":
        body = abi.GETATTR_IN.pack(0, 0, 0)
        return [header(abi.GETATTR, nodeid, len(body)), body], [16, abi.ATTR_OUT.size]
    if kind == "lookup":
        return [header(abi.LOOKUP, abi.ROOT_ID, 2), b"f\0"], [16, abi.ENTRY_OUT.size]
    if kind == "lookup_missing":
        return [header(abi.LOOKUP, abi.ROOT_ID, 2), b"m\0"], [16, abi.ENTRY_OUT.size]
    if kind == "read":
        body = abi.READ_IN.pack(fh, 4096, 4096, 0, 0, 0, 0)
        return [header(abi.READ, nodeid, len(body)), body], [16, 4096]
    if kind == "write":
        body = abi.WRITE_IN.pack(fh, 4096, 4096, 0, 0, 0, 0)
        return [header(abi.WRITE, nodeid, len(body) + 4096), body, b"y" * 4096], [16, abi.WRITE_OUT.size]
    if kind == "getxattr_missing":          # as ls -l asks of every file: an ACL it has not
        body = abi.GETXATTR_IN.pack(0, 0) + b"system.posix_acl_access\0"
        return [header(abi.GETXATTR, nodeid, len(body)), body], [16, abi.GETXATTR_OUT.size]
    if kind == "setattr_times":             # as tar sets each file's times
        body = abi.SETATTR_IN.pack(abi.FATTR_ATIME | abi.FATTR_MTIME, 0, 0, 0, 0, 10**9, 2 * 10**9, 0,
                                   5, 7, 0, 0, 0, 0, 0, 0)
        return [header(abi.SETATTR, nodeid, len(body)), body], [16, abi.ATTR_OUT.size]
    if kind.startswith("readdirplus"):
        body = abi.READ_IN.pack(fh, 0, 4096, 0, 0, 0, 0)
        return [header(abi.READDIRPLUS, nodeid, len(body)), body], [16, 4096]
    if kind == "read128k":                  # as readahead sends it at cache=auto: 32 page-cache pages
        body = abi.READ_IN.pack(fh, 0, 128 << 10, 0, 0, 0, 0)
        return [header(abi.READ, nodeid, len(body)), body], [16] + [PAGE] * 32
    if kind in ("read1m", "read1m_contig"):
        body = abi.READ_IN.pack(fh, 0, 1 << 20, 0, 0, 0, 0)
        return [header(abi.READ, nodeid, len(body)), body], [16] + [PAGE] * 256
    if kind in ("write1m", "write1m_contig"):
        body = abi.WRITE_IN.pack(fh, 0, 1 << 20, 0, 0, 0, 0)
        pages = [b"y" * PAGE] * 256
        return [header(abi.WRITE, nodeid, len(body) + (1 << 20)), body, *pages], [16, abi.WRITE_OUT.size]
    return [], []               # "none": publishing only, subtracted from the others


def _listings(server, share, kind, chains):
    """READDIRPLUS requests, each of a directory of 20 files named as a source
    tree's are (all 20 and '.' and '..' fit in its 4 KiB): one directory
    for every chain of readdirplus_new (each drain looks up 1,280 inodes
    the daemon does not hold), the same one for all of readdirplus (held
    from the first chain on)."""
    requests = []
    for i in range(chains if kind == "readdirplus_new" else 1):
        os.mkdir(os.path.join(share, f"d{i}"))
        for j in range(20):
            open(os.path.join(share, f"d{i}", f"test_module_{j:02}.py"), "w").close()
        dirid, _ = server.vfs.lookup(ROOT_CTX, abi.ROOT_ID, f"d{i}".encode())
        requests.append(_requests(kind, dirid, server.vfs.opendir(ROOT_CTX, dirid, os.O_RDONLY)))
    return requests * (chains // len(requests))


def _forget_listed(vfs, requests, file_nodeid):
    """Forget what the READDIRPLUS replies looked up: all nodes but the root,
    the file and the directories listed."""
    keep = {abi.ROOT_ID, file_nodeid} | {abi.IN_HEADER.unpack(parts[0])[3] for parts, _ in requests}
    for node in list(vfs._nodes.values()):
        if node.nodeid not in keep:
            vfs.forget(node.nodeid, node.nlookup)


def chains_of(kind):
    return BIG_CHAINS if "1m" in kind else CHAINS


def child(kind, rounds, new_tables):
    """Set up a ring and a server, then serve `rounds` drains of chains_of(kind) chains;
    new_tables: the queue forgets the tables it has walked before each drain."""
    share = tempfile.mkdtemp(prefix="pyvfs-instr-")
    with open(os.path.join(share, "f"), "wb") as f:
        f.write(b"x" * (2 << 20))
    server = FuseServer(Vfs(HostBackend(share), cache="never"))
    server.initialized = True
    nodeid, _ = server.vfs.lookup(ROOT_CTX, abi.ROOT_ID, b"f")
    fh = server.vfs.open(ROOT_CTX, nodeid, os.O_RDWR)
    fd = os.memfd_create("guest")
    os.ftruncate(fd, MEM)
    mem = GuestMemory.from_table([(0, MEM, 0, 0)], [os.dup(fd)])
    guest = memoryview(mem.regions[0].map)
    vq = Virtqueue(1)
    vq.size, vq.addrs, vq.event_idx = RING, (0, 0x2000, 0x1000), True     # desc, used, avail
    vq.attach(mem)
    worker = virtio_fs.QueueWorker(_Device(server), [vq])
    chains = chains_of(kind)
    requests = [_requests(kind, nodeid, fh)] * chains
    if kind.startswith("readdirplus"):
        requests = _listings(server, share, kind, chains)

    contiguous = kind.endswith("_contig")

    def place(n):
        """Room for a buffer of n bytes, not adjacent to the one before
        (but pages of a _contig kind): pages on a page boundary, anything
        else 64-byte aligned."""
        nonlocal heap
        if n >= PAGE:
            heap = (heap + (PAGE if contiguous else 2 * PAGE) - 1) & -PAGE
        addr = heap
        heap += n if n >= PAGE and contiguous else (n + 64) & ~63
        return addr

    heap = 0x10000
    for head, (parts, outs) in enumerate(requests):
        descs = []
        for data in parts:
            addr = place(len(data))
            guest[addr:addr + len(data)] = data
            descs.append((addr, len(data), F_NEXT))
        for n in outs:
            descs.append((place(n), n, F_NEXT | F_WRITE))
        if not descs:
            continue
        descs[-1] = descs[-1][:2] + (descs[-1][2] & ~F_NEXT,)
        table = heap
        for i, (addr, n, flags) in enumerate(descs):
            DESC.pack_into(guest, table + 16 * i, addr, n, flags, i + 1)
        heap += (16 * len(descs) + 64) & ~63
        DESC.pack_into(guest, 16 * head, table, 16 * len(descs), F_INDIRECT, 0)
    avail16, idx = vq.avail16, 0
    for _ in range(rounds):
        for head in range(chains):
            avail16[2 + idx % RING] = head
            idx = (idx + 1) & 0xFFFF
        avail16[1] = idx
        if new_tables:
            vq.forget_walked()
        if parts:
            worker.drain(vq)
        else:
            vq.last_avail = idx
        if kind == "lookup":
            server.vfs.forget(nodeid, chains)
        if kind == "readdirplus_new":
            _forget_listed(server.vfs, requests, nodeid)
        failed = vq.used_elems[0] >> 32 <= abi.OUT_HEADER.size       # (id, len) of the first
        if parts and failed != kind.endswith("_missing"):                # (those must fail)
            raise SystemExit(f"{kind}: a reply of {vq.used_elems[0] >> 32} bytes, not what this kind gives")


def count(kind, rounds, new_tables):
    out = tempfile.mktemp(prefix="pyvfs-callgrind-")
    # a fixed hash seed: with a random one, dict probing varies and the same
    # code counts within about 0.5 % from one invocation to the next
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, os.path.abspath(__file__), "--child", kind, str(rounds), str(int(new_tables))],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        with open(out) as f:
            return next(int(line.split()[1]) for line in f if line.startswith("summary:"))
    finally:
        os.unlink(out)


def per_request(kind, new_tables):
    lo, hi = ROUNDS
    return (count(kind, hi, new_tables) - count(kind, lo, new_tables)) / ((hi - lo) * chains_of(kind))


def main(argv):
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), argv[3] == "1")
        return 0
    kinds = argv or KINDS
    base = {new: per_request("none", new) for new in (False, True)}
    print("| request | table walked before | new table |\n|---|---|---|")
    for kind in kinds:
        seen, new = (per_request(kind, new) - base[new] for new in (False, True))
        print(f"| {kind.upper()} | {seen:,.0f} | {new:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
