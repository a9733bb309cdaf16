"""The virtio-fs device: queue 0 is the high-priority queue (FORGET,
BATCH_FORGET, INTERRUPT), queues 1..N carry requests. One worker thread per
request queue waits on its kick eventfd, serves every available chain
through the FUSE server and signals the guest once the chains in sight are
served (before it looks for chains published meanwhile). The worker of
queue 1 serves queue 0 as well: a FORGET then costs no thread of its own
(a wake-up, and a GIL hand-over whenever both were busy), and often shares
a wake-up with the requests around it. Requests go first: between two
chains of queue 0 the worker serves what queue 1 has waiting, so that a
burst of FORGETs (a guest dropping its inode cache sends thousands, one
chain each) does not stand between a process and its replies. Nobody
waits on a FORGET. Queue 0 still never waits behind a request that cannot
finish (a SETLKW that waits is deferred), and it goes on as soon as queue 1
is empty, which it is whenever the guest has no request in flight.
"""
import contextlib
import functools
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


def _empty_pair():
    return Reader([], True, 0), Writer([], True, 0)


class QueueWorker(threading.Thread):
    """Serves a fixed set of queues; the device replaces it when the set changes."""

    def __init__(self, device, vqs, pool=None):
        super().__init__(name=f"vq{max(vq.index for vq in vqs)}", daemon=True)
        self.device, self.vqs, self.pool = device, list(vqs), pool
        self.handle = device.server.handle      # (a bound method made once, not per drain)
        # the request queue whose waiting chains are served between those of queue 0
        self.requests_first = next((vq for vq in self.vqs if vq.index == 1), None)
        self.reader, self.writer = _empty_pair()
        # a deferred reply hands back its chain through its queue's callback
        self.completes = {vq.index: functools.partial(device.complete, vq) for vq in self.vqs}
        self.stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.broken = set()         # indexes of queues that wait for a device reset
        self.stopping = False

    def stop(self):
        self.stopping = True        # a guest that keeps the ring full must not delay us
        os.eventfd_write(self.stop_fd, 1)
        self.join(STOP_TIMEOUT)
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.is_alive():
            self.device.log.error("worker %s did not stop in %ds", self.name, STOP_TIMEOUT)
        os.close(self.stop_fd)

    def run(self):
        # the kick is edge-triggered: every write to the eventfd wakes us, and
        # we never read it back (a read per request is a system call saved;
        # its counter cannot reach its limit of 2**64 - 2 kicks)
        room = 1 + len(self.vqs)
        poller = select.epoll(room)
        by_fd = {vq.kick_fd: vq for vq in self.vqs}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN | select.EPOLLET)
        poller.register(self.stop_fd, select.EPOLLIN)
        for vq in self.vqs:
            self.device.log.debug("queue %d started (size %d)", vq.index, vq.size)
        stop = self.stop_fd
        try:
            while True:
                for fd, _ in poller.poll(-1, room):     # (room for our fds, not the default 1023)
                    if fd == stop:
                        return
                    vq = by_fd[fd]
                    if vq.index not in self.broken:
                        self.drain(vq)
        finally:
            poller.close()

    def drain(self, vq):
        # memory cannot change under us: SET_MEM_TABLE stops the queue first
        handle, complete = self.handle, self.completes[vq.index]
        pool = self.pool if vq.index else None      # the high-priority queue runs inline
        first = self.requests_first if not vq.index else None
        # one Reader and Writer serve request after request, initialised in
        # place: no C call into each __init__, no two objects made and freed
        reader, writer = self.reader, self.writer
        try:
            n = vq.pending() or vq.rearm()      # rearm: published while we looked away (EVENT_IDX)
            while n:
                if self.stopping:               # chains not taken yet stay for the next start
                    vq.notify()
                    return
                n -= 1
                head, (readable, writable, readable_size, writable_size) = vq.take()
                if readable is None:
                    vq.push(head, 0)
                elif pool is not None:
                    pool.submit(self.serve_one, vq, head, readable, writable, readable_size, writable_size)
                else:
                    reader.__init__(readable, True, readable_size)
                    writer.__init__(writable, True, writable_size)
                    try:
                        k = handle(reader, writer, complete, head)
                    except Exception:           # a server bug must not take the queue down
                        self.device.log.exception("queue %d: request failed", vq.index)
                        k = 0
                    if k != DEFERRED:
                        vq.push(head, k)
                    else:                       # replied to later, from a thread that keeps this pair
                        reader, writer = self.reader, self.writer = _empty_pair()
                if first is not None and first.has_waiting() and first.index not in self.broken:
                    self.drain(first)
                    reader, writer = self.reader, self.writer   # (that drain may have given its pair away)
                if not n:
                    # signal what is used before looking for more: a guest
                    # waiting on this reply need not wait for those too
                    vq.notify()
                    n = vq.rearm()
        except BadChain as e:
            self.device.log.error("queue %d is broken until the device is reset: %s", vq.index, e)
            self.broken.add(vq.index)
            vq.notify()

    def serve_one(self, vq, head, readable, writable, readable_size, writable_size):
        """One chain on a pool thread (--thread-pool-size)."""
        complete = self.completes[vq.index]
        try:
            n = self.handle(Reader(readable, True, readable_size),
                            Writer(writable, True, writable_size), complete, head)
        except Exception:
            self.device.log.exception("queue %d: request failed", vq.index)
            n = 0
        if n != DEFERRED:
            complete(head, n)


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
        self.workers = {}           # request queue index -> the worker serving it (1: and queue 0)

    def start_queue(self, vq):
        self._restart(max(vq.index, 1), add=vq)

    def stop_queue(self, vq):
        self._restart(max(vq.index, 1), remove=vq)

    def _restart(self, key, add=None, remove=None):
        """Replace the worker of request queue `key` by one serving its queues
        plus `add`, less `remove` (queue 0 goes with queue 1). Queues start
        and stop only while the front-end sets them up or tears them down."""
        vqs = []
        old = self.workers.pop(key, None)
        if old is not None:
            old.stop()
            vqs = [vq for vq in old.vqs if vq is not remove and vq is not add]
        if add is not None:
            vqs.append(add)
        if not vqs:
            return
        pool = None
        if self.thread_pool_size and key in (vq.index for vq in vqs):
            pool = ThreadPoolExecutor(self.thread_pool_size, thread_name_prefix=f"vq{key}-pool")
        w = QueueWorker(self, vqs, pool)
        self.workers[key] = w
        w.start()

    def complete(self, vq, head, n):
        """A deferred reply is written (from another thread): hand its chain back."""
        with self.memory_lock:
            if vq.mem is not None:
                vq.push(head, n)
                vq.notify()


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
