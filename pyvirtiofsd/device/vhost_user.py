"""The vhost-user back-end protocol (QEMU docs/interop/vhost-user.rst) on a
connected unix socket: feature negotiation, the memory table, vring set-up
and teardown, REPLY_ACK. What to do with running queues is the device's
business (virtio_fs.py): this module calls device.start_queue(vq) and
device.stop_queue(vq); running queues are stopped while memory is replaced,
and device.memory_lock keeps late (deferred) replies out meanwhile.
"""
import logging
import os
import socket
import struct

from .memory import BadAddress, GuestMemory
from .virtqueue import MAX_QUEUE_SIZE, Virtqueue

log = logging.getLogger("pyvirtiofsd.vhost_user")

HEADER = struct.Struct("<III")          # request flags size
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")      # index num
VRING_ADDR = struct.Struct("<IIQQQQ")   # index flags desc used avail log
MEM_HEADER = struct.Struct("<II")       # nregions padding
MEM_REGION = struct.Struct("<QQQQ")     # gpa size uaddr mmap_offset
CONFIG_HEADER = struct.Struct("<III")   # offset size flags
VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
MAX_PAYLOAD = 4096
MAX_REGIONS = 8
VRING_NOFD = 1 << 8
VRING_IDX_MASK = 0xFF

# feature bits
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_PROTOCOL_FEATURES = 1 << 30
F_VERSION_1 = 1 << 32
# protocol feature bits
PF_MQ = 1 << 0
PF_REPLY_ACK = 1 << 3
PF_CONFIG = 1 << 9

REQUESTS = {
    1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER", 5: "SET_MEM_TABLE",
    6: "SET_LOG_BASE", 7: "SET_LOG_FD", 8: "SET_VRING_NUM", 9: "SET_VRING_ADDR",
    10: "SET_VRING_BASE", 11: "GET_VRING_BASE", 12: "SET_VRING_KICK", 13: "SET_VRING_CALL",
    14: "SET_VRING_ERR", 15: "GET_PROTOCOL_FEATURES", 16: "SET_PROTOCOL_FEATURES",
    17: "GET_QUEUE_NUM", 18: "SET_VRING_ENABLE", 19: "SEND_RARP", 20: "NET_SET_MTU",
    21: "SET_BACKEND_REQ_FD", 22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN", 24: "GET_CONFIG",
    25: "SET_CONFIG", 31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD", 34: "RESET_DEVICE",
    36: "GET_MAX_MEM_SLOTS", 37: "ADD_MEM_REG", 38: "REM_MEM_REG", 39: "SET_STATUS", 40: "GET_STATUS",
}
# requests whose reply is their answer (REPLY_ACK adds nothing to them)
HAS_REPLY = {1, 11, 15, 17, 24, 36, 40}
# payload sizes of the fixed-size requests; any other size is a broken
# front-end and ends the connection (SET_MEM_TABLE and CONFIG are checked
# against their own counts)
PAYLOAD_SIZE = {1: 0, 2: 8, 3: 0, 4: 0, 8: 8, 9: VRING_ADDR.size, 10: 8, 11: 8, 12: 8, 13: 8,
                14: 8, 15: 0, 16: 8, 17: 0, 18: 8, 34: 0, 36: 0, 39: 8, 40: 0}


class ProtocolError(Exception):
    """The front-end broke the protocol: the connection is dropped."""


class VhostUserBackend:
    def __init__(self, conn: socket.socket, device):
        self.conn = conn
        self.device = device
        self.features = F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX | F_PROTOCOL_FEATURES
        # CONFIG is not offered: QEMU 7.2 keeps the virtio-fs config space itself
        self.protocol_features = PF_MQ | PF_REPLY_ACK
        self.acked_features = 0
        self.acked_protocol = 0
        self.mem = GuestMemory()
        self.queues = [Virtqueue(i) for i in range(device.max_queues)]
        self.started = set()

    # -- the message loop -----------------------------------------------------------------
    def run(self) -> None:
        """Serve messages until the front-end disconnects."""
        try:
            while True:
                msg = self._recv()
                if msg is None:
                    log.info("front-end disconnected")
                    return
                self._dispatch(*msg)
        except ProtocolError as e:
            log.error("dropping the front-end: %s", e)
        except ConnectionError as e:
            log.info("front-end disconnected: %s", e)
        finally:
            for vq in self.queues:
                self._stop(vq)
                for fd in (vq.kick_fd, vq.set_call_fd(None)):
                    if fd is not None:
                        _close_quietly(fd)
                vq.kick_fd = None
            self.mem.close()

    def _recv(self):
        try:
            data, fds, msg_flags, _ = socket.recv_fds(self.conn, HEADER.size, MAX_REGIONS)
        except ConnectionResetError:
            return None
        if not data:
            return None
        if msg_flags & socket.MSG_CTRUNC:
            for fd in fds:
                _close_quietly(fd)
            raise ProtocolError(f"more than {MAX_REGIONS} file descriptors in one message")
        try:
            if len(data) < HEADER.size:
                data += self._recv_exact(HEADER.size - len(data))
            request, flags, size = HEADER.unpack(data)
            name = REQUESTS.get(request, request)
            if flags & 0x3 != VERSION:
                raise ProtocolError(f"{name}: protocol version {flags & 0x3}")
            if size > MAX_PAYLOAD or size != PAYLOAD_SIZE.get(request, size):
                raise ProtocolError(f"{name}: payload of {size} bytes")
            payload = self._recv_exact(size)
        except BaseException:
            for fd in fds:
                _close_quietly(fd)
            raise
        return request, flags, payload, list(fds)

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.conn.recv(n - len(buf))
            if not chunk:
                raise ProtocolError("connection closed inside a message")
            buf += chunk
        return buf

    def _reply(self, request, payload: bytes):
        self.conn.sendall(HEADER.pack(request, VERSION | FLAG_REPLY, len(payload)) + payload)

    def _dispatch(self, request, flags, payload, fds):
        name = REQUESTS.get(request, str(request))
        handler = getattr(self, "do_" + name.lower(), None)
        log.debug("<- %s (%d bytes, %d fds)", name, len(payload), len(fds))
        ok = True
        try:
            if handler is None:
                log.warning("unsupported vhost-user request %s", name)
                ok = False
            else:
                answer = handler(payload, fds)
                if request in HAS_REPLY:
                    self._reply(request, answer)
                    return
        except (struct.error, BadAddress, ValueError, OSError) as e:
            log.error("%s failed: %s", name, e)
            ok = False
        finally:
            for fd in fds:
                _close_quietly(fd)          # handlers dup what they keep
        if request in HAS_REPLY and not ok:
            raise ProtocolError(f"{name} cannot be answered")
        if flags & FLAG_NEED_REPLY and self.acked_protocol & PF_REPLY_ACK:
            self._reply(request, U64.pack(0 if ok else 1))

    def _queue(self, index):
        if index >= len(self.queues):
            raise ValueError(f"queue {index} does not exist (max {len(self.queues)})")
        return self.queues[index]

    # -- features and ownership ---------------------------------------------------------
    def do_get_features(self, p, fds):
        return U64.pack(self.features)

    def do_set_features(self, p, fds):
        (features,) = U64.unpack(p)
        if features & ~self.features:
            raise ValueError(f"front-end acked unoffered features {features & ~self.features:#x}")
        self.acked_features = features
        for vq in self.queues:
            vq.event_idx = bool(features & F_EVENT_IDX)
        log.info("features acked: %#x", features)

    def do_get_protocol_features(self, p, fds):
        return U64.pack(self.protocol_features)

    def do_set_protocol_features(self, p, fds):
        (features,) = U64.unpack(p)
        self.acked_protocol = features & self.protocol_features

    def do_get_queue_num(self, p, fds):
        return U64.pack(len(self.queues))

    def do_set_owner(self, p, fds):
        pass

    def do_reset_owner(self, p, fds):
        self.do_reset_device(p, fds)

    def do_reset_device(self, p, fds):
        for vq in self.queues:
            self._stop(vq)
            vq.__init__(vq.index)

    def do_get_config(self, p, fds):
        if len(p) < CONFIG_HEADER.size:
            raise ProtocolError(f"GET_CONFIG: payload of {len(p)} bytes")
        offset, size, flags = CONFIG_HEADER.unpack_from(p)
        if len(p) != CONFIG_HEADER.size + size:
            raise ProtocolError(f"GET_CONFIG: {size} config bytes in a payload of {len(p)}")
        cfg = self.device.config_space
        if offset + size > len(cfg):
            raise ValueError("config read out of range")
        return CONFIG_HEADER.pack(offset, size, flags) + cfg[offset:offset + size]

    def do_set_config(self, p, fds):
        raise ValueError("virtio-fs config space is read-only")

    # -- memory -----------------------------------------------------------------------------
    def do_set_mem_table(self, p, fds):
        if len(p) < MEM_HEADER.size:
            raise ProtocolError(f"SET_MEM_TABLE: payload of {len(p)} bytes")
        nregions, _ = MEM_HEADER.unpack_from(p)
        if len(p) != MEM_HEADER.size + nregions * MEM_REGION.size:
            raise ProtocolError(f"SET_MEM_TABLE: {nregions} regions in a payload of {len(p)} bytes")
        if not 0 < nregions <= MAX_REGIONS:
            raise ValueError(f"memory table of {nregions} regions in {len(p)} bytes")
        entries = [MEM_REGION.unpack_from(p, MEM_HEADER.size + i * MEM_REGION.size) for i in range(nregions)]
        mem = GuestMemory.from_table(entries, [os.dup(fd) for fd in fds])
        running = [vq for vq in self.queues if vq in self.started]
        for vq in running:
            self._stop(vq)
        with self.device.memory_lock:
            old, self.mem = self.mem, mem
            for vq in self.queues:
                if vq.addrs is not None and vq.size:
                    try:
                        vq.attach(mem)
                    except BadAddress as e:     # the ring is not in the new table
                        log.error("queue %d: %s", vq.index, e)
                        vq.detach()
        old.close()
        for vq in running:
            self._start(vq)
        log.info("memory table: %s", ", ".join(f"{gpa:#x}+{size:#x}" for gpa, size, _, _ in entries))

    def do_set_log_base(self, p, fds):
        raise ValueError("dirty logging is not offered")

    # -- vrings -------------------------------------------------------------------------------
    # QEMU sends NUM/ADDR/BASE only to a stopped ring; a running one is
    # stopped first, so that its worker never sees a half-changed ring.
    def do_set_vring_num(self, p, fds):
        index, num = VRING_STATE.unpack(p)
        if num == 0 or num > MAX_QUEUE_SIZE or num & (num - 1):
            raise ValueError(f"queue size {num}")
        vq = self._queue(index)
        self._stop(vq)
        with self.device.memory_lock:
            vq.detach()             # the ring views were sized for the old number
            vq.size = num

    def do_set_vring_addr(self, p, fds):
        index, _flags, desc, used, avail, _log = VRING_ADDR.unpack(p)
        vq = self._queue(index)
        running = vq in self.started
        self._stop(vq)
        with self.device.memory_lock:
            vq.addrs = (desc, used, avail)
            vq.attach(self.mem)
        if running:
            self._start(vq)

    def do_set_vring_base(self, p, fds):
        index, num = VRING_STATE.unpack(p)
        vq = self._queue(index)
        self._stop(vq)
        vq.last_avail = num & 0xFFFF

    def do_get_vring_base(self, p, fds):
        index, _ = VRING_STATE.unpack(p)
        vq = self._queue(index)
        self._stop(vq)
        if vq.kick_fd is not None:
            _close_quietly(vq.kick_fd)
            vq.kick_fd = None
        with self.device.memory_lock:
            vq.detach()             # a late (deferred) reply must not touch a stopped ring
        return VRING_STATE.pack(index, vq.last_avail)

    def _fd_arg(self, p, fds):
        (u,) = U64.unpack(p)
        vq = self._queue(u & VRING_IDX_MASK)
        if u & VRING_NOFD:
            return vq, None
        if len(fds) != 1:
            raise ValueError("expected one file descriptor")
        return vq, os.dup(fds[0])

    def do_set_vring_kick(self, p, fds):
        vq, fd = self._fd_arg(p, fds)
        if fd is None:
            raise ValueError("polling mode (no kick fd) is not supported")
        self._stop(vq)
        if vq.kick_fd is not None:
            _close_quietly(vq.kick_fd)
        vq.kick_fd = fd
        if not self.acked_features & F_PROTOCOL_FEATURES:
            vq.enabled = True        # without protocol features a ring starts enabled
        self._start(vq)

    def do_set_vring_call(self, p, fds):
        vq, fd = self._fd_arg(p, fds)
        old = vq.set_call_fd(fd)
        if old is not None:
            _close_quietly(old)

    def do_set_vring_err(self, p, fds):
        vq, fd = self._fd_arg(p, fds)
        if fd is not None:
            _close_quietly(fd)       # we report no errors through it

    def do_set_vring_enable(self, p, fds):
        index, enable = VRING_STATE.unpack(p)
        vq = self._queue(index)
        vq.enabled = bool(enable)
        if vq.enabled:
            self._start(vq)
        else:
            self._stop(vq)

    def _start(self, vq):
        if vq.enabled and vq.kick_fd is not None and vq.desc is not None and vq not in self.started:
            self.started.add(vq)
            self.device.start_queue(vq)

    def _stop(self, vq):
        if vq in self.started:
            self.started.discard(vq)
            self.device.stop_queue(vq)


def _close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass
