"""A vhost-user front-end for tests: it plays QEMU's part against our
back-end. Guest memory is a memfd shared with the back-end; the split rings
and buffers live in it; kick and call are eventfds. Besides well-formed
requests (usable as the `send` of fuse_client.FuseClient) it can place any
descriptor chain, hostile ones included."""
import mmap
import os
import select
import socket
import struct
import time

from pyvirtiofsd.device import vhost_user as vu
from pyvirtiofsd.device.virtqueue import F_INDIRECT, F_NEXT, F_WRITE

DESC = struct.Struct("<QIHH")
USED = struct.Struct("<II")
UADDR_BASE = 0x7F00_0000_0000     # the front-end's own address of guest memory
RING_AREA = 1 << 20               # rings of all queues live below this


def wait_readable(fd, timeout):
    """Is fd readable within timeout seconds? (poll: no FD_SETSIZE limit
    on the descriptor's number, unlike select)"""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(timeout * 1000))


class Queue:
    def __init__(self, index, size, base):
        self.index, self.size = index, size
        self.desc = base
        self.avail = base + 16 * size
        self.used = (self.avail + 6 + 2 * size + 4095) & ~4095
        self.end = self.used + 6 + 8 * size
        self.avail_idx = 0
        self.used_seen = 0
        self.next_desc = 0
        self.kick = os.eventfd(0, os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


class Frontend:
    def __init__(self, socket_path, *, mem_size=64 << 20, queue_size=64, num_queues=2,
                 features=vu.F_VERSION_1 | vu.F_INDIRECT_DESC | vu.F_EVENT_IDX | vu.F_PROTOCOL_FEATURES):
        self.mem_size = mem_size
        self.memfd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, mem_size)
        self.mem = mmap.mmap(self.memfd, mem_size)
        self.view = memoryview(self.mem)
        # ring indices are stored and loaded as one 16-bit word each, as a guest
        # kernel does: struct.pack_into zeroes its target before writing, and
        # the back-end, running at the same time, could read that zero
        self.words = self.view.cast("H")
        self.sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock.connect(socket_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock.settimeout(10)
        self.features = features
        self.manage_used_event = True
        self.queues = []
        base = 0
        for i in range(num_queues):
            q = Queue(i, queue_size, base)
            self.queues.append(q)
            base = (q.end + 4095) & ~4095
        assert base <= RING_AREA
        self.heap = RING_AREA

    # -- vhost-user messages -----------------------------------------------------------------
    def send(self, request, payload=b"", fds=(), need_reply=False):
        flags = vu.VERSION | (vu.FLAG_NEED_REPLY if need_reply else 0)
        msg = vu.HEADER.pack(request, flags, len(payload)) + payload
        if fds:
            socket.send_fds(self.sock, [msg], list(fds))
        else:
            self.sock.sendall(msg)

    def recv_reply(self):
        hdr = self._recv_exact(vu.HEADER.size)
        request, flags, size = vu.HEADER.unpack(hdr)
        assert flags & vu.FLAG_REPLY
        return request, self._recv_exact(size)

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("back-end closed the connection")
            buf += chunk
        return buf

    def call(self, request, payload=b"", fds=()):
        """A request that has a reply of its own."""
        self.send(request, payload, fds)
        req, data = self.recv_reply()
        assert req == request
        return data

    def acked(self, request, payload=b"", fds=()):
        """A request sent with need_reply: -> the back-end's status (0 = ok)."""
        self.send(request, payload, fds, need_reply=True)
        req, data = self.recv_reply()
        assert req == request
        return vu.U64.unpack(data)[0]

    def handshake(self, queues=None):
        """What QEMU 7.2's vhost-user-fs-pci sends to start the device."""
        offered = vu.U64.unpack(self.call(1))[0]
        self.send(2, vu.U64.pack(self.features & offered))
        proto = vu.U64.unpack(self.call(15))[0]
        assert self.acked(16, vu.U64.pack(proto & (vu.PF_MQ | vu.PF_REPLY_ACK))) == 0
        self.max_queues = vu.U64.unpack(self.call(17))[0]
        assert self.acked(3) == 0
        table = vu.MEM_HEADER.pack(1, 0) + vu.MEM_REGION.pack(0, self.mem_size, UADDR_BASE, 0)
        assert self.acked(5, table, [self.memfd]) == 0
        for q in (queues if queues is not None else self.queues):
            self.start_queue(q)

    def start_queue(self, q, base=0):
        """Start a ring whose indices begin at base (as after a migration)."""
        q.avail_idx = q.used_seen = base
        self.store16(q.used + 2, base)
        self.store16(q.avail + 2, base)
        assert self.acked(8, vu.VRING_STATE.pack(q.index, q.size)) == 0
        assert self.acked(10, vu.VRING_STATE.pack(q.index, base)) == 0
        assert self.acked(9, vu.VRING_ADDR.pack(q.index, 0, UADDR_BASE + q.desc, UADDR_BASE + q.used,
                                                UADDR_BASE + q.avail, 0)) == 0
        assert self.acked(13, vu.U64.pack(q.index), [q.call]) == 0
        assert self.acked(12, vu.U64.pack(q.index), [q.kick]) == 0
        assert self.acked(18, vu.VRING_STATE.pack(q.index, 1)) == 0

    def close(self):
        self.sock.close()
        for q in self.queues:
            os.close(q.kick)
            os.close(q.call)
        self.words.release()
        self.view.release()
        self.mem.close()
        os.close(self.memfd)

    # -- guest memory and rings --------------------------------------------------------------
    def alloc(self, n, data=None):
        n = max(n, 1)
        if self.heap + n > self.mem_size:
            self.heap = RING_AREA
        addr = self.heap
        self.heap = (self.heap + n + 63) & ~63
        if data is not None:
            self.view[addr:addr + len(data)] = data
        return addr

    def write_desc(self, q, idx, addr, length, flags, nxt=0, table=None):
        base = q.desc if table is None else table
        DESC.pack_into(self.view, base + 16 * idx, addr, length, flags, nxt)

    def publish(self, q, head, kick=True):
        if self.manage_used_event:
            # as a guest driver does with EVENT_IDX: call me once the next entry is used
            self.set_used_event(q, q.used_seen)
        self.store16(q.avail + 4 + 2 * (q.avail_idx % q.size), head)
        q.avail_idx = (q.avail_idx + 1) & 0xFFFF
        self.store16(q.avail + 2, q.avail_idx)
        if kick:
            os.eventfd_write(q.kick, 1)

    def store16(self, addr, value):
        self.words[addr // 2] = value

    def load16(self, addr):
        return self.words[addr // 2]

    def set_used_event(self, q, value):
        self.store16(q.avail + 4 + 2 * q.size, value)

    def used_idx(self, q):
        return self.load16(q.used + 2)

    def wait_used(self, q, timeout=10.0):
        """-> (head, length) of the next used entry."""
        deadline = time.monotonic() + timeout
        while self.used_idx(q) == q.used_seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"queue {q.index}: no used entry within {timeout}s")
            wait_readable(q.call, min(left, 0.05))
            try:
                os.eventfd_read(q.call)
            except BlockingIOError:
                pass
        head, length = USED.unpack_from(self.view, q.used + 4 + 8 * (q.used_seen % q.size))
        q.used_seen = (q.used_seen + 1) & 0xFFFF
        return head, length

    def signalled(self, q, timeout=0.3):
        """Was the call eventfd signalled (within timeout)?"""
        if not wait_readable(q.call, timeout):
            return False
        os.eventfd_read(q.call)
        return True

    def chain(self, q, readable, writable_lens, indirect=False):
        """Place a chain of buffers; -> (head, [writable addresses])."""
        bufs = [(self.alloc(len(b), b), len(b), 0) for b in readable]
        outs = [(self.alloc(n), n, F_WRITE) for n in writable_lens]
        descs = bufs + outs
        if indirect:
            table = self.alloc(16 * len(descs))
            for i, (addr, n, fl) in enumerate(descs):
                self.write_desc(q, i, addr, n, fl | (F_NEXT if i + 1 < len(descs) else 0), i + 1, table=table)
            head = self._take_desc(q, 1)[0]
            self.write_desc(q, head, table, 16 * len(descs), F_INDIRECT)
        else:
            idxs = self._take_desc(q, len(descs))
            for i, (addr, n, fl) in enumerate(descs):
                last = i + 1 == len(descs)
                self.write_desc(q, idxs[i], addr, n, fl | (0 if last else F_NEXT), 0 if last else idxs[i + 1])
            head = idxs[0]
        return head, [a for a, _, _ in outs]

    def _take_desc(self, q, n):
        if n > q.size:
            raise ValueError(f"a chain of {n} descriptors does not fit a queue of {q.size}")
        idxs = [(q.next_desc + i) % q.size for i in range(n)]
        q.next_desc = (q.next_desc + n) % q.size
        return idxs

    def request(self, data: bytes, room: int, queue=1, indirect=False, split=None) -> bytes:
        """Send one FUSE request and return the reply bytes (fuse_client transport).
        split cuts the request into buffers of that size, as a guest may."""
        q = self.queues[queue]
        parts = [data[i:i + split] for i in range(0, len(data), split)] if split else [data]
        head, outs = self.chain(q, parts, [room] if room else [], indirect=indirect)
        self.publish(q, head)
        got, length = self.wait_used(q)
        assert got == head, f"used head {got}, expected {head}"
        return bytes(self.view[outs[0]:outs[0] + length]) if outs else b""
