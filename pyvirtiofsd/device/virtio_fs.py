"""The virtio-fs device: queue 0 is the high-priority queue (FORGET,
BATCH_FORGET, INTERRUPT), queues 1..N carry requests. One worker thread per
started queue waits on its kick eventfd, serves every available chain
through the FUSE server and signals the guest once per batch.
"""
import contextlib
import logging
import os
import select
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

from ..protocol.buffers import Reader, Writer
from ..protocol.server import DEFERRED
from .vhost_user import VhostUserBackend
from .virtqueue import BadChain

MAX_REQUEST_QUEUES = 16
TAG_SIZE = 36
STOP_TIMEOUT = 30


class QueueWorker(threading.Thread):
    def __init__(self, device, vq, pool=None):
        super().__init__(name=f"vq{vq.index}", daemon=True)
        self.device, self.vq, self.pool = device, vq, pool
        self.stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.broken = False
        self.stopping = False

    def stop(self):
        self.stopping = True        # a guest that keeps the ring full must not delay us
        os.eventfd_write(self.stop_fd, 1)
        self.join(STOP_TIMEOUT)
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.is_alive():
            self.device.log.error("queue %d worker did not stop in %ds", self.vq.index, STOP_TIMEOUT)
        os.close(self.stop_fd)

    def run(self):
        # the kick is edge-triggered: every write to the eventfd wakes us, and
        # we never read it back (a read per request is a system call saved;
        # its counter cannot reach its limit of 2**64 - 2 kicks)
        poller = select.epoll(2)
        poller.register(self.vq.kick_fd, select.EPOLLIN | select.EPOLLET)
        poller.register(self.stop_fd, select.EPOLLIN)
        self.device.log.debug("queue %d started (size %d)", self.vq.index, self.vq.size)
        stop = self.stop_fd
        try:
            while True:
                for fd, _ in poller.poll(-1, 2):      # (room for our two fds, not the default 1023)
                    if fd == stop:
                        return
                    if not self.broken:
                        self.drain()
        finally:
            poller.close()

    def drain(self):
        # memory cannot change under us: SET_MEM_TABLE stops the queue first
        vq, handle, complete, pool = self.vq, self.device.server.handle, self.complete, self.pool
        try:
            n = vq.pending() or vq.rearm()      # rearm: published while we looked away (EVENT_IDX)
            while n and not self.stopping:      # chains not taken yet stay for the next start
                n -= 1
                head, readable, writable = vq.take()
                if readable is None:
                    vq.push(head, 0)
                elif pool is not None:
                    pool.submit(self.serve_one, head, readable, writable)
                else:
                    try:
                        k = handle(Reader(readable, True), Writer(writable, True), complete, head)
                    except Exception:           # a server bug must not take the queue down
                        self.device.log.exception("queue %d: request failed", vq.index)
                        k = 0
                    if k != DEFERRED:
                        vq.push(head, k)
                if not n:
                    n = vq.rearm()
        except BadChain as e:
            self.device.log.error("queue %d is broken until the device is reset: %s", vq.index, e)
            self.broken = True
        vq.notify()

    def serve_one(self, head, readable, writable):
        """One chain on a pool thread (--thread-pool-size)."""
        try:
            n = self.device.server.handle(Reader(readable, True), Writer(writable, True), self.complete, head)
        except Exception:
            self.device.log.exception("queue %d: request failed", self.vq.index)
            n = 0
        if n != DEFERRED:
            self.complete(head, n)

    def complete(self, head, n):
        """A deferred reply is written (from another thread): hand its chain back."""
        with self.device.memory_lock:
            if self.vq.mem is not None:
                self.vq.push(head, n)
                self.vq.notify()


class VirtioFsDevice:
    def __init__(self, server, tag="myfs", num_request_queues=1, log=None, thread_pool_size=0):
        self.server = server
        self.thread_pool_size = thread_pool_size
        self.log = log or logging.getLogger("pyvirtiofsd")
        self.max_queues = 1 + max(MAX_REQUEST_QUEUES, num_request_queues)
        tag_bytes = tag.encode()
        if not 0 < len(tag_bytes) <= TAG_SIZE:
            raise ValueError(f"tag must be 1..{TAG_SIZE} bytes")
        self.config_space = tag_bytes.ljust(TAG_SIZE, b"\0") + struct.pack("<I", num_request_queues)
        self.memory_lock = threading.Lock()
        self.workers = {}

    def start_queue(self, vq):
        # requests of a queue run on its worker, or on a pool when asked for;
        # the high-priority queue (FORGET, INTERRUPT) always runs inline
        pool = None
        if self.thread_pool_size and vq.index > 0:
            pool = ThreadPoolExecutor(self.thread_pool_size, thread_name_prefix=f"vq{vq.index}-pool")
        w = QueueWorker(self, vq, pool)
        self.workers[vq.index] = w
        w.start()

    def stop_queue(self, vq):
        w = self.workers.pop(vq.index, None)
        if w is not None:
            w.stop()


def _listen(socket_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        if not os.path.exists(socket_path) or not os.path.isdir(socket_path):
            os.unlink(socket_path)
    sock.bind(socket_path)
    sock.listen(1)
    return sock


def serve(server, *, socket_path=None, listen_fd=None, tag="myfs", num_request_queues=1,
          thread_pool_size=0, log=logging.getLogger("pyvirtiofsd")) -> int:
    """Accept one vhost-user front-end and serve it until it disconnects."""
    sock = _listen(socket_path) if socket_path else socket.socket(fileno=listen_fd)
    try:
        log.info("waiting for a vhost-user front-end on %s", socket_path or f"fd {listen_fd}")
        conn, _ = sock.accept()
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()
        if socket_path:
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
    log.info("front-end connected")
    device = VirtioFsDevice(server, tag, num_request_queues, log, thread_pool_size)
    try:
        VhostUserBackend(conn, device).run()
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
    return 0
