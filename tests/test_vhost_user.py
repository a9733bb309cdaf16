"""The vhost-user back-end driven by a Python front-end (tests/vhost_frontend.py)
that does what QEMU does: real FUSE traffic through guest memory, two
request queues, indirect descriptors, EVENT_IDX — and hostile messages and
descriptor chains, which must be refused without crash or hang."""
import logging
import os
import socket
import struct
import threading
import time

import pytest

from fuse_client import FuseClient
from pyvirtiofsd.device import vhost_user as vu
from pyvirtiofsd.device import virtio_fs
from pyvirtiofsd.device.virtqueue import F_INDIRECT, F_NEXT, F_WRITE
from pyvirtiofsd.protocol import abi
from pyvirtiofsd.protocol.server import DEFERRED, FuseServer
from pyvirtiofsd.vfs.backends.host import HostBackend
from pyvirtiofsd.vfs.vfs import Vfs
from vhost_frontend import UADDR_BASE, Frontend

ROOT = abi.ROOT_ID


class Daemon:
    """serve() in a thread, as the CLI runs it."""

    def __init__(self, share, sock, **opts):
        self.server = FuseServer(Vfs(HostBackend(share)))
        self.rc = None
        self.thread = threading.Thread(target=self._run, args=(sock, opts), daemon=True)
        self.thread.start()

    def _run(self, sock, opts):
        self.rc = virtio_fs.serve(self.server, socket_path=sock, **opts)

    def wait(self, timeout=10):
        self.thread.join(timeout)
        return self.rc


@pytest.fixture
def share(tmp_path):
    d = tmp_path / "share"
    d.mkdir()
    return d


@pytest.fixture
def setup(share, tmp_path):
    sock = str(tmp_path / "vfs.sock")
    daemon = Daemon(str(share), sock)
    fe = Frontend(sock)
    yield daemon, fe
    fe.close()
    assert daemon.wait() == 0, "serve() must return 0 when the front-end goes away"
    assert not os.path.exists(sock)


def client(fe, queue=1, **kw):
    c = FuseClient(lambda req, room: fe.request(req, room, queue=queue, **kw))
    c.init()
    return c


def test_handshake_like_qemu_and_fuse_round_trips(setup, share):
    daemon, fe = setup
    fe.handshake()
    assert fe.max_queues >= 3
    c = client(fe)
    e, fh = c.create(ROOT, b"data", 0o644)
    payload = os.urandom(1 << 20)
    for off in range(0, len(payload), 256 << 10):
        assert c.write(e.nodeid, fh, off, payload[off:off + (256 << 10)]) == 256 << 10
    assert (share / "data").read_bytes() == payload
    assert c.read(e.nodeid, fh, 0, 1 << 20) == payload
    c.release(e.nodeid, fh)
    assert c.lookup(ROOT, b"data").attr.size == 1 << 20


def test_indirect_and_scattered_requests(setup, share):
    daemon, fe = setup
    fe.handshake()
    plain = client(fe)
    indirect = FuseClient(lambda req, room: fe.request(req, room, indirect=True))
    scattered = FuseClient(lambda req, room: fe.request(req, room, split=97))   # odd-sized buffers
    d = plain.mkdir(ROOT, b"d")
    assert indirect.lookup(ROOT, b"d").nodeid == d.nodeid
    assert scattered.lookup(ROOT, b"d").nodeid == d.nodeid
    e, fh = scattered.create(d.nodeid, b"f")
    assert scattered.write(e.nodeid, fh, 0, b"x" * 5000) == 5000
    assert indirect.read(e.nodeid, fh, 0, 5000) == b"x" * 5000
    assert (share / "d" / "f").read_bytes() == b"x" * 5000


def test_second_request_queue(share, tmp_path):
    sock = str(tmp_path / "vfs.sock")
    daemon = Daemon(str(share), sock)
    fe = Frontend(sock, num_queues=3)
    try:
        fe.handshake()
        a, b = client(fe, queue=1), client(fe, queue=2)
        e = a.mkdir(ROOT, b"x")
        assert b.lookup(ROOT, b"x").nodeid == e.nodeid
        assert fe.used_idx(fe.queues[2]) > 0 and fe.used_idx(fe.queues[1]) > 0
    finally:
        fe.close()
    assert daemon.wait() == 0


def test_hiprio_queue_forgets(setup, share):
    daemon, fe = setup
    fe.handshake()
    c = client(fe)
    (share / "f").write_bytes(b"")
    e = c.lookup(ROOT, b"f")
    hi = FuseClient(lambda req, room: fe.request(req, room, queue=0))
    hi.forget(e.nodeid, 1)
    with pytest.raises(OSError):
        daemon.server.vfs.node(e.nodeid)


def test_event_idx_suppresses_and_sends_notifications(setup):
    daemon, fe = setup
    fe.handshake()
    c = client(fe)
    q = fe.queues[1]
    fe.manage_used_event = False
    fe.set_used_event(q, (fe.used_idx(q) + 10) & 0xFFFF)      # "don't call me yet"
    fe.signalled(q, 0)
    c.getattr(ROOT)
    assert not fe.signalled(q, 0.3)
    fe.set_used_event(q, fe.used_idx(q))                       # "call me at the next one"
    req = abi.IN_HEADER.pack(56, abi.GETATTR, 99, ROOT, 0, 0, 0, 0, 0) + abi.GETATTR_IN.pack(0, 0, 0)
    head, _ = fe.chain(q, [req], [200])
    fe.publish(q, head)
    assert fe.signalled(q, 5)
    assert fe.wait_used(q)[0] == head


def hostile(fe, q, place):
    """Place a chain with place(q) -> head; return its used length."""
    head = place(q)
    fe.publish(q, head)
    got, length = fe.wait_used(q, timeout=5)
    assert got == head
    return length


def test_malformed_chains_are_refused_and_the_daemon_goes_on(setup, caplog):
    daemon, fe = setup
    fe.handshake()
    c = client(fe)
    q = fe.queues[1]
    good = fe.alloc(64)
    cases = {
        "loop": lambda q: (fe.write_desc(q, 5, good, 8, F_NEXT, 6), fe.write_desc(q, 6, good, 8, F_NEXT, 5), 5)[-1],
        "next out of table": lambda q: (fe.write_desc(q, 5, good, 8, F_NEXT, 999), 5)[-1],
        "address outside memory": lambda q: (fe.write_desc(q, 5, fe.mem_size + 4096, 64, 0), 5)[-1],
        "length past the end": lambda q: (fe.write_desc(q, 5, fe.mem_size - 16, 1 << 30, F_WRITE), 5)[-1],
        "address wraps": lambda q: (fe.write_desc(q, 5, (1 << 64) - 8, 64, 0), 5)[-1],
        "readable after writable": lambda q: (fe.write_desc(q, 5, good, 8, F_WRITE | F_NEXT, 6),
                                              fe.write_desc(q, 6, good, 8, 0), 5)[-1],
        "indirect length not 16n": lambda q: (fe.write_desc(q, 5, good, 24, F_INDIRECT), 5)[-1],
        "indirect inside indirect": lambda q: (fe.write_desc(q, 0, good, 16, F_INDIRECT, table=good),
                                               fe.write_desc(q, 5, good, 16, F_INDIRECT), 5)[-1],
        "indirect table outside memory": lambda q: (fe.write_desc(q, 5, fe.mem_size, 64, F_INDIRECT), 5)[-1],
        "indirect with next": lambda q: (fe.write_desc(q, 5, good, 16, F_INDIRECT | F_NEXT, 6), 5)[-1],
        "empty readable part": lambda q: (fe.write_desc(q, 5, good, 0, 0), 5)[-1],
    }
    with caplog.at_level(logging.WARNING):
        for name, place in cases.items():
            assert hostile(fe, q, place) == 0, name
            assert c.getattr(ROOT).mode & 0o40000, f"daemon stopped serving after {name}"
    assert "loops" in caplog.text and "not in guest memory" in caplog.text


def test_garbage_fuse_requests_through_guest_memory(setup):
    daemon, fe = setup
    fe.handshake()
    c = client(fe)
    q = fe.queues[1]
    for junk in (b"", b"\xff" * 7, os.urandom(40), abi.IN_HEADER.pack(1 << 31, abi.WRITE, 1, 1, 0, 0, 0, 0, 0)):
        fe.request(junk, 256)
    head, _ = fe.chain(q, [abi.IN_HEADER.pack(40, abi.GETATTR, 9, ROOT, 0, 0, 0, 0, 0)], [4])  # room too small
    fe.publish(q, head)
    assert fe.wait_used(q) == (head, 0)
    assert c.getattr(ROOT).nlink >= 2


def test_bad_head_breaks_only_that_queue(share, tmp_path, caplog):
    sock = str(tmp_path / "vfs.sock")
    daemon = Daemon(str(share), sock)
    fe = Frontend(sock, num_queues=3)
    try:
        fe.handshake()
        good = client(fe, queue=2)
        q = fe.queues[1]
        with caplog.at_level(logging.ERROR):
            fe.publish(q, 1000)                                # a head index past the table
            good.getattr(ROOT)
            for _ in range(50):
                if "broken" in caplog.text:
                    break
                threading.Event().wait(0.05)
        assert "broken" in caplog.text
        assert good.getattr(ROOT).ino == os.stat(share).st_ino
        # an avail index jumping past the queue size is refused the same way
        q2 = fe.queues[2]
        caplog.clear()
        fe.store16(q2.avail + 2, (q2.avail_idx + q2.size + 5) & 0xFFFF)
        os.eventfd_write(q2.kick, 1)
        for _ in range(50):
            if "ahead of" in caplog.text:
                break
            threading.Event().wait(0.05)
        assert "ahead of" in caplog.text
    finally:
        fe.close()
    assert daemon.wait() == 0


def test_protocol_errors(setup, share, caplog):
    daemon, fe = setup
    fe.send(2, vu.U64.pack(vu.F_VERSION_1 | vu.F_PROTOCOL_FEATURES))
    fe.send(16, vu.U64.pack(vu.PF_REPLY_ACK))
    assert fe.acked(999) == 1                                  # unknown request
    assert fe.acked(6, vu.U64.pack(0)) == 1                    # no dirty log was offered
    assert fe.acked(5, vu.MEM_HEADER.pack(2, 0) + vu.MEM_REGION.pack(0, 4096, 0, 0) * 2, [fe.memfd]) == 1
    assert fe.acked(5, vu.MEM_HEADER.pack(0, 0)) == 1
    assert fe.acked(8, vu.VRING_STATE.pack(0, 3)) == 1          # not a power of two
    assert fe.acked(8, vu.VRING_STATE.pack(500, 64)) == 1        # no such queue
    table = vu.MEM_HEADER.pack(1, 0) + vu.MEM_REGION.pack(0, fe.mem_size, 0x1000, 0)
    assert fe.acked(5, table, [fe.memfd]) == 0
    assert fe.acked(8, vu.VRING_STATE.pack(1, 64)) == 0
    assert fe.acked(9, vu.VRING_ADDR.pack(1, 0, 0xdead0000, 0x1000, 0x2000, 0)) == 1   # ring outside memory
    # an oversized message ends the connection; serve() still returns 0 (checked by the fixture)
    fe.sock.sendall(vu.HEADER.pack(1, vu.VERSION, 1 << 20))
    assert fe.sock.recv(16) == b""


def test_get_vring_base_stops_the_queue_and_reports_progress(setup):
    daemon, fe = setup
    fe.handshake()
    c = client(fe)
    c.getattr(ROOT)
    index, num = vu.VRING_STATE.unpack(fe.call(11, vu.VRING_STATE.pack(1, 0)))
    assert (index, num) == (1, fe.queues[1].avail_idx)
    q = fe.queues[1]
    before = fe.used_idx(q)
    head, _ = fe.chain(q, [abi.IN_HEADER.pack(56, abi.GETATTR, 7, ROOT, 0, 0, 0, 0, 0) + bytes(16)], [200])
    fe.publish(q, head)
    threading.Event().wait(0.3)
    assert fe.used_idx(q) == before                            # a stopped queue is not served


def test_cli_with_a_listening_fd_from_libvirt_exits_0_on_disconnect(share, tmp_path):
    """`pyvirtiofsd --fd N`: libvirt hands over a listening socket."""
    import socket
    import subprocess
    import sys
    path = str(tmp_path / "libvirt.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtiofsd", "--fd", str(listener.fileno()),
                             "--shared-dir", str(share)], pass_fds=[listener.fileno()],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    listener.close()
    try:
        fe = Frontend(path)
        fe.handshake()
        c = client(fe)
        c.mkdir(ROOT, b"via-fd")
        fe.close()
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert (share / "via-fd").is_dir() and "requests served" in out


def test_thread_pool_serves_many_chains_in_flight(share, tmp_path):
    """--thread-pool-size: chains published together are served concurrently
    and each comes back exactly once with its own data."""
    sock = str(tmp_path / "vfs.sock")
    daemon = Daemon(str(share), sock, thread_pool_size=4)
    fe = Frontend(sock)
    try:
        fe.handshake()
        c = client(fe)
        blobs = {i: os.urandom(50_000 + i) for i in range(8)}
        for i, data in blobs.items():
            (share / f"f{i}").write_bytes(data)
        handles = {i: (lambda e: (e.nodeid, c.open(e.nodeid, os.O_RDONLY)))(c.lookup(ROOT, b"f%d" % i))
                   for i in blobs}
        q = fe.queues[1]
        placed = {}
        for i, (nodeid, fh) in handles.items():
            req = abi.IN_HEADER.pack(80, abi.READ, 1000 + i, nodeid, 0, 0, 0, 0, 0) + \
                abi.READ_IN.pack(fh, 0, 60_000, 0, 0, 0, 0)
            head, outs = fe.chain(q, [req], [16 + 60_000])
            placed[head] = (i, outs[0])
            fe.publish(q, head, kick=False)
        os.eventfd_write(q.kick, 1)
        seen = set()
        for _ in placed:
            head, length = fe.wait_used(q)
            i, addr = placed[head]
            assert head not in seen
            seen.add(head)
            assert bytes(fe.view[addr + 16:addr + length]) == blobs[i]
        assert len(seen) == 8
    finally:
        fe.close()
    assert daemon.wait() == 0


# -- the device layer with a stand-in server -----------------------------------------------------
class Echo:
    """handle(reader, writer): reply with the request reversed; b"boom" raises,
    b"quiet" has no reply (as FORGET), b"later" is answered from another
    thread once `release` is set (as a SETLKW that waits), b"gate" holds the
    worker until `gate` is set. during[data], if set, runs while data is served."""

    def __init__(self):
        self.seen = []
        self.release = threading.Event()
        self.gate = threading.Event()
        self.during = {}

    def handle(self, reader, writer, complete=None, tag=None):
        data = reader.read_all()
        self.seen.append((threading.current_thread().name, data))
        if data in self.during:
            self.during.pop(data)()
        if data == b"gate":
            self.gate.wait(10)
        if data == b"boom":
            raise RuntimeError("a server bug")
        if data == b"quiet":
            return 0
        if data == b"later":
            def finish():
                self.release.wait(10)
                writer.write(data[::-1])
                complete(tag, writer.written)
            threading.Thread(target=finish, daemon=True).start()
            return DEFERRED
        if data == b"slow":
            threading.Event().wait(0.05)
        writer.write(data[::-1])
        return writer.written


@pytest.fixture
def echo(tmp_path):
    sock = str(tmp_path / "echo.sock")
    server = Echo()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", virtio_fs.serve(server, socket_path=sock)),
                         daemon=True)
    t.start()
    fe = Frontend(sock, num_queues=3)

    def finish():
        fe.sock.close()
        t.join(10)
        return result.get("rc")
    yield server, fe, finish
    if not t.is_alive():
        fe.close()
        return
    fe.close()
    t.join(10)
    assert result.get("rc") == 0


def test_echo_round_trips_zero_copy_on_every_queue_thread(echo):
    server, fe, _ = echo
    fe.handshake()
    assert fe.max_queues == 1 + virtio_fs.MAX_REQUEST_QUEUES
    assert fe.request(b"abc" * 1000, 3000, queue=1, split=97) == (b"abc" * 1000)[::-1]
    assert fe.request(b"xyz", 10, queue=2, indirect=True) == b"zyx"
    assert fe.request(b"quiet", 10, queue=0) == b""            # no reply: used with length 0
    assert [name for name, _ in server.seen] == ["vq1", "vq2", "vq1"]      # queue 0 is served with queue 1


def test_a_deferred_reply_returns_its_own_chain_while_the_queue_goes_on(echo):
    server, fe, _ = echo
    fe.handshake()
    q = fe.queues[1]
    assert fe.request(b"first", 10) == b"tsrif"
    head, outs = fe.chain(q, [b"later"], [16])
    assert head != 0                                           # (a wrong head would not pass as 0)
    fe.publish(q, head)
    assert fe.request(b"now", 10) == b"won"                    # served while "later" waits
    server.release.set()
    got, length = fe.wait_used(q)
    assert (got, bytes(fe.view[outs[0]:outs[0] + length])) == (head, b"retal")


def test_a_server_exception_is_logged_and_the_queue_goes_on(echo, caplog):
    server, fe, _ = echo
    fe.handshake()
    with caplog.at_level(logging.ERROR):
        assert fe.request(b"boom", 10) == b""
    assert "request failed" in caplog.text
    assert fe.request(b"still here", 20) == b"ereh llits"


def test_many_chains_per_kick_and_16_bit_index_wrap(echo):
    """Batches of chains published with one kick, on a ring whose indices
    start just below 65536: every chain comes back once, with its reply."""
    server, fe, _ = echo
    fe.handshake(queues=[fe.queues[0], fe.queues[2]])
    q = fe.queues[1]
    fe.start_queue(q, base=0xFFF0)
    for batch in range(6):
        placed = {}
        for i in range(q.size // 2):                           # two descriptors per chain
            head, outs = fe.chain(q, [b"%d-%d" % (batch, i)], [16])
            placed[head] = (outs[0], b"%d-%d" % (batch, i))
            fe.publish(q, head, kick=False)
        os.eventfd_write(q.kick, 1)
        for _ in range(q.size // 2):
            head, length = fe.wait_used(q)
            addr, data = placed.pop(head)
            assert bytes(fe.view[addr:addr + length]) == data[::-1]
        assert not placed
    assert fe.used_idx(q) == (0xFFF0 + 6 * q.size // 2) & 0xFFFF == 0xB0


def test_a_reply_is_signalled_before_chains_published_meanwhile_are_served(echo):
    """A guest with EVENT_IDX publishes without a kick while the worker is
    busy. The worker finds those chains after the ones it was kicked for;
    it signals the replies it has before it serves them."""
    server, fe, _ = echo
    fe.handshake(queues=[fe.queues[0], fe.queues[2]])
    q = fe.queues[1]
    fe.start_queue(q)
    held, _ = fe.chain(q, [b"gate"], [16])
    first, outs = fe.chain(q, [b"first"], [16])
    server.during[b"first"] = lambda: fe.publish(q, held, kick=False)
    fe.publish(q, first)
    try:
        assert fe.signalled(q, 5), "the reply waited for the chain published meanwhile"
        assert fe.wait_used(q, 0) == (first, 5)
        assert bytes(fe.view[outs[0]:outs[0] + 5]) == b"tsrif"
        deadline = time.monotonic() + 5
        while server.seen[-1][1] != b"gate" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fe.used_idx(q) == 1 and server.seen[-1][1] == b"gate"     # being served, not used yet
        fe.set_used_event(q, q.used_seen)                      # the guest wants to hear of the next
    finally:
        server.gate.set()
    assert fe.signalled(q, 5)
    assert fe.wait_used(q, 0)[0] == held


def test_requests_waiting_on_queue_1_go_between_the_chains_of_queue_0(echo):
    """A burst of FORGETs on queue 0 (a guest dropping its caches) does not
    hold back a request: between two chains of queue 0 the worker serves
    what waits on queue 1, then goes on with queue 0."""
    server, fe, _ = echo
    fe.handshake()
    q0, q1 = fe.queues[0], fe.queues[1]
    request, outs = fe.chain(q1, [b"request"], [16])
    server.during[b"forget 0"] = lambda: fe.publish(q1, request)
    forgets = [fe.chain(q0, [b"forget %d" % i], [16])[0] for i in range(4)]
    for head in forgets:
        fe.publish(q0, head, kick=False)
    os.eventfd_write(q0.kick, 1)
    assert fe.wait_used(q1) == (request, 7)
    assert bytes(fe.view[outs[0]:outs[0] + 7]) == b"tseuqer"
    assert [fe.wait_used(q0)[0] for _ in forgets] == forgets
    assert [data for _, data in server.seen] == [b"forget 0", b"request", b"forget 1", b"forget 2", b"forget 3"]


def test_a_request_deferred_between_chains_of_queue_0_keeps_its_reply_buffer(echo):
    """A request served between two chains of queue 0 may wait (SETLKW): it
    keeps its Reader and Writer, and queue 0 goes on with new ones."""
    server, fe, _ = echo
    fe.handshake()
    q0, q1 = fe.queues[0], fe.queues[1]
    later, outs = fe.chain(q1, [b"later"], [16])
    server.during[b"forget 0"] = lambda: fe.publish(q1, later)
    forgets = [fe.chain(q0, [b"forget %d" % i], [16]) for i in range(3)]
    for head, _ in forgets:
        fe.publish(q0, head, kick=False)
    os.eventfd_write(q0.kick, 1)
    for i, (head, out) in enumerate(forgets):
        assert fe.wait_used(q0) == (head, 8)
        assert bytes(fe.view[out[0]:out[0] + 8]) == (b"forget %d" % i)[::-1]
    server.release.set()
    assert fe.wait_used(q1) == (later, 5)
    assert bytes(fe.view[outs[0]:outs[0] + 5]) == b"retal"


def test_call_fd_replaced_on_a_running_queue(echo):
    server, fe, _ = echo
    fe.handshake()
    q = fe.queues[1]
    new_call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    assert fe.acked(13, vu.U64.pack(1), [new_call]) == 0       # as QEMU does when the guest masks the vector
    os.close(q.call)
    q.call = new_call
    assert fe.request(b"after", 10) == b"retfa"                # wait_used selects on the new fd


def test_memory_table_replaced_while_queues_run(echo):
    """SET_MEM_TABLE on a running device: the queues pause, the new table
    (here the same memfd cut into two regions) is mapped, and they resume."""
    server, fe, _ = echo
    fe.handshake()
    assert fe.request(b"before", 10) == b"erofeb"
    half = fe.mem_size // 2
    table = vu.MEM_HEADER.pack(2, 0) + vu.MEM_REGION.pack(0, half, UADDR_BASE, 0) + \
        vu.MEM_REGION.pack(half, half, UADDR_BASE + half, half)
    assert fe.acked(5, table, [fe.memfd, fe.memfd]) == 0
    fe.heap = half - 8                                         # the next buffer straddles both regions
    assert fe.request(b"0123456789abcdef", 16) == b"fedcba9876543210"
    # a table that drops the rings' memory: the queues cannot be mapped, the daemon goes on
    table = vu.MEM_HEADER.pack(1, 0) + vu.MEM_REGION.pack(1 << 40, fe.mem_size, 1 << 40, 0)
    assert fe.acked(5, table, [fe.memfd]) == 0
    assert vu.U64.unpack(fe.call(17))[0] == 17


def hung_up(sock):
    """Did the back-end close the connection (with unread bytes it resets it)?"""
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("name, message", [
    ("wrong size for SET_FEATURES", vu.HEADER.pack(2, vu.VERSION, 4) + b"\0" * 4),
    ("payload on GET_FEATURES", vu.HEADER.pack(1, vu.VERSION, 8) + b"\0" * 8),
    ("protocol version 2", vu.HEADER.pack(3, 2, 0)),
    ("memory table count disagrees with size", vu.HEADER.pack(5, vu.VERSION, 8 + 32) + vu.MEM_HEADER.pack(3, 0) + bytes(32)),
    ("truncated header then hang-up", vu.HEADER.pack(1, vu.VERSION, 0)[:5]),
    ("payload cut short", vu.HEADER.pack(2, vu.VERSION, 8) + b"\0" * 3),
])
def test_malformed_messages_drop_the_front_end_and_serve_returns_0(echo, name, message, caplog):
    server, fe, finish = echo
    with caplog.at_level(logging.INFO):
        fe.sock.sendall(message)
        fe.sock.shutdown(socket.SHUT_WR)
        assert hung_up(fe.sock), name
        assert finish() == 0
    assert "dropping the front-end" in caplog.text or "disconnected" in caplog.text


def test_too_many_fds_in_one_message_drop_the_front_end(echo, caplog):
    server, fe, finish = echo
    fds = [os.eventfd(0) for _ in range(vu.MAX_REGIONS + 4)]
    with caplog.at_level(logging.ERROR):
        fe.send(13, vu.U64.pack(1), fds)
        assert hung_up(fe.sock)
        assert finish() == 0
    for fd in fds:
        os.close(fd)
    assert "file descriptors" in caplog.text


def test_reconfiguring_a_running_ring_stops_it_first(echo):
    server, fe, _ = echo
    fe.handshake()
    q = fe.queues[1]
    assert fe.request(b"one", 3) == b"eno"
    # a hostile front-end shrinks the running ring: the worker must not walk it half-changed
    assert fe.acked(8, vu.VRING_STATE.pack(1, 8)) == 0
    fe.publish(q, fe.chain(q, [b"x"], [1])[0])
    threading.Event().wait(0.2)
    assert fe.used_idx(q) == 1                                 # stopped: nothing served
    # QEMU's restart sequence brings it back at the base we tell it
    q.size = 8
    q.avail_idx = q.used_seen = 0
    fe.view[q.desc:q.end] = bytes(q.end - q.desc)
    fe.start_queue(q)
    assert fe.request(b"two", 3) == b"owt"


def test_queue_0_and_queue_1_share_a_worker_and_stop_apart(echo):
    """Queue 0 rides on queue 1's thread: stopping either leaves the other
    served, and a restarted queue joins the running one again."""
    server, fe, _ = echo
    fe.handshake()
    q0, q1 = fe.queues[0], fe.queues[1]
    assert fe.request(b"a", 1, queue=0) == b"a" and fe.request(b"b", 1, queue=1) == b"b"
    # GET_VRING_BASE stops queue 0 alone
    assert vu.VRING_STATE.unpack(fe.call(11, vu.VRING_STATE.pack(0, 0))) == (0, q0.avail_idx)
    fe.publish(q0, fe.chain(q0, [b"x"], [1])[0])
    assert fe.request(b"cd", 2, queue=1) == b"dc"              # queue 1 goes on
    threading.Event().wait(0.2)
    assert fe.used_idx(q0) == q0.avail_idx - 1                 # queue 0 does not
    published = q0.avail_idx
    fe.start_queue(q0, base=published - 1)                     # restarted where it stopped
    q0.avail_idx = published                                   # with "x" still in the ring
    fe.store16(q0.avail + 2, published)
    os.eventfd_write(q0.kick, 1)
    assert fe.wait_used(q0)[1] == 1
    # now queue 1 stops and queue 0 keeps its own thread
    assert vu.VRING_STATE.unpack(fe.call(11, vu.VRING_STATE.pack(1, 0))) == (1, q1.avail_idx)
    assert fe.request(b"ef", 2, queue=0) == b"fe"
    fe.publish(q1, fe.chain(q1, [b"y"], [1])[0])
    threading.Event().wait(0.2)
    assert fe.used_idx(q1) == q1.avail_idx - 1
    assert server.seen == [("vq1", b"a"), ("vq1", b"b"), ("vq1", b"cd"), ("vq1", b"x"), ("vq0", b"ef")]


def test_serve_on_a_listening_fd_and_a_stale_socket_path(tmp_path):
    stale = tmp_path / "stale.sock"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(stale))
    old.close()                                                # left behind by a dead daemon
    results = []
    t = threading.Thread(target=lambda: results.append(virtio_fs.serve(Echo(), socket_path=str(stale))))
    t.start()
    fe = Frontend(str(stale))
    fe.handshake()
    assert fe.request(b"ok", 2) == b"ko"
    fe.close()
    t.join(10)
    assert results == [0] and not stale.exists()

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "lv.sock"))
    listener.listen(1)
    t = threading.Thread(target=lambda: results.append(virtio_fs.serve(Echo(), listen_fd=listener.detach())))
    t.start()
    fe = Frontend(str(tmp_path / "lv.sock"))
    fe.handshake()
    assert fe.request(b"fd", 2) == b"df"
    fe.close()
    t.join(10)
    assert results == [0, 0]


def test_get_vring_base_is_not_delayed_by_a_full_ring_and_loses_nothing(echo):
    """The worker stops between chains: GET_VRING_BASE answers within about
    one request, and what it reports as taken is exactly what is used."""
    import time
    server, fe, _ = echo
    fe.handshake()
    q = fe.queues[1]
    for _ in range(q.size // 2):
        fe.publish(q, fe.chain(q, [b"slow"], [8])[0], kick=False)
    os.eventfd_write(q.kick, 1)
    threading.Event().wait(0.12)
    t0 = time.monotonic()
    index, base = vu.VRING_STATE.unpack(fe.call(11, vu.VRING_STATE.pack(1, 0)))
    assert time.monotonic() - t0 < 0.5                         # not 32 x 50 ms
    assert 0 < base < q.size // 2 and fe.used_idx(q) == base
    # restarted at that base, the rest is served
    fe.start_queue(q, base=base)
    q.avail_idx = q.size // 2                                  # the ring still holds the untaken chains
    fe.store16(q.avail + 2, q.avail_idx)
    os.eventfd_write(q.kick, 1)
    for _ in range(q.size // 2 - base):
        assert fe.wait_used(q)[1] == 4
    assert fe.used_idx(q) == q.size // 2
