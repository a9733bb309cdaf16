"""The rings under real concurrency: the daemon runs as its own process
(its own interpreter, so truly in parallel with us) while several producer
threads here keep a request queue full the way the Linux virtio_fs driver
does — indirect chains, a free list of heads, EVENT_IDX kicks — and a
consumer takes used entries. A watcher process spins on the used index the
whole time: a guest may read it at any instant, so it must only ever move
forward, one store at a time. Every used id must be a head we made
available and every reply must carry its request's unique."""
import multiprocessing
import os
import subprocess
import sys
import threading
import time

from pyvirtiofsd.device.virtqueue import F_INDIRECT, F_NEXT, F_WRITE
from pyvirtiofsd.protocol import abi
from fuse_client import FuseClient
from vhost_frontend import USED, Frontend, wait_readable

QUEUE_SIZE = 128
PRODUCERS = 4
REQUESTS = 30_000
AREA = 2 << 20                 # per-head area: indirect table, request at +1024, reply at +2048


def watch_used_index(words, index, stop, result):
    """Spin on a 16-bit ring index; count the times it moved backwards. (A
    move of more than half the index space forward is taken as a move back:
    the run stays below 32,768 requests, and a watcher preempted for a while
    may well see a jump of more than a ring's worth forward.)"""
    bad, reads, last = 0, 0, words[index]
    while not stop.is_set():
        for _ in range(10_000):
            now = words[index]
            if (now - last) & 0xFFFF > 0x8000:
                bad += 1
            last = now
        reads += 10_000
    result.put((bad, reads))


class Driver:
    """A guest driver's half of one request queue."""

    def __init__(self, fe, q):
        self.fe, self.q = fe, q
        self.lock = threading.Lock()             # as the driver's per-queue spinlock
        self.free = list(range(q.size))
        self.outstanding = {}                    # head -> unique
        self.done = 0
        self.errors = []

    def produce(self, producer):
        fe, q, v = self.fe, self.q, self.fe.view
        unique = producer << 40
        while self.done < REQUESTS and not self.errors:
            with self.lock:
                head = self.free.pop() if self.free else None
                if head is not None:
                    unique += 1
                    base = AREA + head * 4096
                    req = abi.IN_HEADER.pack(40 + abi.GETATTR_IN.size, abi.GETATTR, unique, abi.ROOT_ID,
                                             0, 0, 0, 0, 0) + bytes(abi.GETATTR_IN.size)
                    v[base + 1024:base + 1024 + len(req)] = req
                    fe.write_desc(q, 0, base + 1024, len(req), F_NEXT, 1, table=base)
                    fe.write_desc(q, 1, base + 2048, 256, F_WRITE, 0, table=base)
                    fe.write_desc(q, head, base, 32, F_INDIRECT)
                    self.outstanding[head] = unique
                    before = q.avail_idx
                    fe.publish(q, head, kick=False)     # kicked below only if avail_event asks
                    avail_event = fe.load16(q.used + 4 + 8 * q.size)
                    kick = (q.avail_idx - avail_event - 1) & 0xFFFF < (q.avail_idx - before) & 0xFFFF
            if head is None:
                time.sleep(0.0002)
            elif kick:
                os.eventfd_write(q.kick, 1)

    def consume(self):
        fe, q, v = self.fe, self.q, self.fe.view
        while self.done < REQUESTS and not self.errors:
            with self.lock:
                while fe.used_idx(q) != q.used_seen:
                    head, length = USED.unpack_from(v, q.used + 4 + 8 * (q.used_seen % q.size))
                    q.used_seen = (q.used_seen + 1) & 0xFFFF
                    unique = self.outstanding.pop(head, None)
                    if unique is None:
                        self.errors.append(f"used id {head} is not an outstanding head")
                        return
                    out_len, err, got = abi.OUT_HEADER.unpack_from(v, AREA + head * 4096 + 2048)
                    if (got, err, out_len) != (unique, 0, length):
                        self.errors.append(f"head {head}: reply {got}/{err}/{out_len}, wanted {unique}/0/{length}")
                    self.free.append(head)
                    self.done += 1
                fe.set_used_event(q, q.used_seen)
                more = fe.used_idx(q) != q.used_seen
            if not more:
                wait_readable(q.call, 0.2)
                try:
                    os.eventfd_read(q.call)
                except BlockingIOError:
                    pass


def test_many_chains_in_flight_against_a_daemon_process(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    sock = str(tmp_path / "vfs.sock")
    daemon = subprocess.Popen([sys.executable, "-m", "pyvirtiofsd", "--socket-path", sock,
                               "--shared-dir", str(share), "--cache", "never", "--log-level", "warn"],
                              stderr=subprocess.PIPE, text=True)
    fe = Frontend(sock, queue_size=QUEUE_SIZE, mem_size=64 << 20)
    try:
        fe.handshake()
        c = FuseClient(lambda req, room: fe.request(req, room, queue=1))
        c.init()
        q = fe.queues[1]
        ctx = multiprocessing.get_context("fork")
        stop, result = ctx.Event(), ctx.Queue()
        watcher = ctx.Process(target=watch_used_index, args=(fe.words, (q.used + 2) // 2, stop, result))
        watcher.start()
        driver = Driver(fe, q)
        threads = [threading.Thread(target=driver.produce, args=(i + 1,)) for i in range(PRODUCERS)]
        threads.append(threading.Thread(target=driver.consume))
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = any(t.is_alive() for t in threads)
        if stuck:
            driver.errors.append(f"stalled after {driver.done} requests")
        stop.set()
        backwards, reads = result.get(timeout=10)
        watcher.join(10)
    finally:
        fe.close()
        try:
            daemon.wait(10)
        finally:
            daemon.kill()
    log = daemon.stderr.read()
    assert not driver.errors, driver.errors[:3]
    assert driver.done >= REQUESTS
    assert reads > 100_000, "the watcher hardly looked"
    assert backwards == 0, f"the used index went backwards {backwards} times in {reads} reads"
    assert daemon.returncode == 0 and "ERROR" not in log and "WARN" not in log, log
