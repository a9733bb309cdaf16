"""The split virtqueue on its own: chains walked out of guest memory (direct,
indirect, across regions), every kind of malformed chain refused without
touching memory outside the table or looping, used-ring updates with 16-bit
wrap-around, and EVENT_IDX / NO_INTERRUPT notification suppression."""
import contextlib
import logging
import mmap
import os
import random
import struct

import pytest
from hypothesis import event, given, settings, strategies as st

from pyvirtiofsd.device import virtqueue
from pyvirtiofsd.device.memory import GuestMemory
from pyvirtiofsd.device.virtqueue import F_INDIRECT, F_NEXT, F_WRITE, BadChain, Virtqueue

DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED = struct.Struct("<II")
MEM = 1 << 20                 # guest-physical [0, MEM) in two adjacent regions
HALF = MEM // 2
UADDR = 0x7000_0000           # the front-end's address of guest-physical 0
HEAP = 0x10000                # buffers start here, rings live below


class Ring:
    """A guest driver's view of one split ring, in memfd guest memory."""

    def __init__(self, size=8, event_idx=False):
        self.fd = os.memfd_create("guest")
        os.ftruncate(self.fd, MEM)
        self.mem = GuestMemory.from_table([(0, HALF, UADDR, 0), (HALF, HALF, UADDR + HALF, HALF)],
                                          [os.dup(self.fd), os.dup(self.fd)])
        self.size = size
        self.desc, self.avail, self.used = 0x0, 0x1000, 0x2000
        self.vq = Virtqueue(1)
        self.vq.size = size
        self.vq.addrs = (UADDR + self.desc, UADDR + self.used, UADDR + self.avail)
        self.vq.event_idx = event_idx
        self.vq.attach(self.mem)
        self.call = os.eventfd(0, os.EFD_NONBLOCK)
        self.vq.set_call_fd(self.call)
        self.avail_idx = 0
        self.heap = HEAP

    def close(self):
        self.vq.detach()
        self.mem.close()
        os.close(self.fd)
        os.close(self.call)

    def poke(self, addr, data):
        os.pwrite(self.fd, data, addr)

    def peek(self, addr, n):
        return os.pread(self.fd, n, addr)

    def buf(self, data=b"", n=None):
        n = len(data) if n is None else n
        addr = self.heap
        self.heap += (n + 15) & ~15 or 16
        self.poke(addr, data)
        return addr

    def put_desc(self, idx, addr, length, flags=0, nxt=0, table=None):
        self.poke((self.desc if table is None else table) + 16 * idx, DESC.pack(addr, length, flags, nxt))

    def publish(self, head):
        self.poke(self.avail + 4 + 2 * (self.avail_idx % self.size), U16.pack(head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.poke(self.avail + 2, U16.pack(self.avail_idx))

    def used_idx(self):
        return U16.unpack(self.peek(self.used + 2, 2))[0]

    def used_elem(self, slot):
        return USED.unpack(self.peek(self.used + 4 + 8 * (slot % self.size), 8))

    def avail_event(self):
        return U16.unpack(self.peek(self.used + 4 + 8 * self.size, 2))[0]

    def set_used_event(self, v):
        self.poke(self.avail + 4 + 2 * self.size, U16.pack(v))

    def signalled(self):
        try:
            return os.eventfd_read(self.call) > 0
        except BlockingIOError:
            return False


@pytest.fixture
def ring():
    r = Ring()
    yield r
    r.close()


def joined(views):
    return b"".join(bytes(v) for v in views)


WALKS = ["c", "python"]         # the indirect table walk: tablewalk.c, or the Python loop where it is not built


@contextlib.contextmanager
def table_walk(which):
    """Walk indirect tables with the C helper or without it."""
    saved = virtqueue.walk_in_c
    if which == "python":
        virtqueue.walk_in_c = None
    try:
        yield
    finally:
        virtqueue.walk_in_c = saved


def test_the_c_table_walk_is_built():
    """`pip install -e .` builds it (setup.py): where it is missing the
    queue still works, in Python, but these machines have a compiler."""
    assert virtqueue.walk_in_c is not None, "pyvirtiofsd.device._tablewalk was not built (gcc, python3-dev)"


def test_direct_chain_gives_readable_then_writable_views_into_guest_memory(ring):
    a, b = ring.buf(b"hello "), ring.buf(b"world")
    out = ring.buf(n=32)
    ring.put_desc(3, a, 6, F_NEXT, 5)
    ring.put_desc(5, b, 5, F_NEXT, 1)
    ring.put_desc(1, out, 32, F_WRITE)
    ring.publish(3)
    assert ring.vq.pending() == 1
    head, (readable, writable, readable_size, writable_size) = ring.vq.take()
    assert head == 3 and joined(readable) == b"hello world"
    assert [len(v) for v in writable] == [32]
    assert (readable_size, writable_size) == (11, 32)
    writable[0][:4] = b"done"                                 # zero copy: straight into guest memory
    assert ring.peek(out, 4) == b"done"
    assert ring.vq.pop() is None


def test_indirect_chain_and_a_buffer_spanning_two_regions(ring):
    span = HALF - 10                                           # 10 bytes in region 0, 20 in region 1
    ring.poke(span, bytes(range(30)))
    out = ring.buf(n=8)
    table = ring.buf(n=32)
    ring.put_desc(0, span, 30, F_NEXT, 1, table=table)
    ring.put_desc(1, out, 8, F_WRITE, table=table)
    ring.put_desc(2, table, 32, F_INDIRECT)
    ring.publish(2)
    head, readable, writable = ring.vq.pop()
    assert head == 2 and [len(v) for v in readable] == [10, 20]
    assert joined(readable) == bytes(range(30)) and len(writable) == 1


def test_adjacent_buffers_become_one_view_per_direction(ring):
    """Guest pages that follow each other in memory are joined (fewer iovecs
    for preadv/pwritev), never across a gap, a direction or a region end."""
    base = 0x40000
    ring.poke(base, bytes(range(256)) * 64)
    table = ring.buf(n=16 * 8)
    descs = [(base, 4096, 0), (base + 4096, 4096, 0),          # adjacent: one view
             (base + 3 * 4096, 100, 0),                        # a gap: a new view
             (base + 3 * 4096 + 100, 0, 0),                    # empty: nothing
             (base + 3 * 4096 + 100, 50, F_WRITE),             # adjacent, but writable
             (base + 3 * 4096 + 150, 50, F_WRITE),
             (HALF - 8, 8, F_WRITE), (HALF, 8, F_WRITE)]       # adjacent across the region end
    for i, (addr, length, flags) in enumerate(descs):
        last = i == len(descs) - 1
        ring.put_desc(i, addr, length, flags | (0 if last else F_NEXT), i + 1, table=table)
    ring.put_desc(0, table, 16 * len(descs), F_INDIRECT)
    ring.publish(0)
    head, readable, writable = ring.vq.pop()
    assert [len(v) for v in readable] == [8192, 100]
    assert joined(readable) == ring.peek(base, 8192) + ring.peek(base + 3 * 4096, 100)
    assert [len(v) for v in writable] == [100, 8, 8]
    writable[0][:] = b"w" * 100
    assert ring.peek(base + 3 * 4096 + 100, 100) == b"w" * 100


def test_push_fills_the_used_ring_and_indices_wrap_at_16_bits(ring):
    vq = ring.vq
    vq.last_avail = ring.avail_idx = 0xFFFE
    vq.used_idx = 0xFFFE
    for i in range(4):
        ring.put_desc(i, ring.buf(b"x"), 1)
        ring.publish(i)
    for i in range(4):
        head, readable, _ = vq.pop()
        assert head == i and joined(readable) == b"x"
        vq.push(head, 100 + i)
    assert vq.pop() is None and vq.last_avail == 2
    assert ring.used_idx() == 2
    assert [ring.used_elem(s) for s in (0xFFFE, 0xFFFF, 0, 1)] == [(0, 100), (1, 101), (2, 102), (3, 103)]


def test_longest_legal_chains_are_accepted(ring):
    for i in range(ring.size):                                 # every descriptor of the table, once
        ring.put_desc(i, ring.buf(b"%d" % i), 1, F_NEXT if i + 1 < ring.size else 0, i + 1)
    ring.publish(0)
    assert joined(ring.vq.pop()[1]) == b"01234567"
    table = ring.buf(n=16 * 1000)                              # an indirect table may exceed the ring
    for i in range(1000):
        ring.put_desc(i, ring.buf(b"y"), 1, F_NEXT if i < 999 else 0, i + 1, table=table)
    ring.put_desc(0, table, 16 * 1000, F_INDIRECT)
    ring.publish(0)
    assert joined(ring.vq.pop()[1]) == b"y" * 1000


def malformed_cases(r):
    """name -> a function placing a bad chain at head 4."""
    ok = r.buf(b"data")
    t = r.buf(n=64)
    return {
        "loop": lambda: (r.put_desc(4, ok, 4, F_NEXT, 5), r.put_desc(5, ok, 4, F_NEXT, 4)),
        "self loop": lambda: r.put_desc(4, ok, 4, F_NEXT, 4),
        "next out of range": lambda: r.put_desc(4, ok, 4, F_NEXT, 8),
        "address outside memory": lambda: r.put_desc(4, MEM, 1),
        "length past the end": lambda: r.put_desc(4, MEM - 4, 8),
        "huge length": lambda: r.put_desc(4, 0, 0xFFFFFFFF, F_WRITE),
        "address wraps": lambda: r.put_desc(4, (1 << 64) - 2, 4),
        "readable after writable": lambda: (r.put_desc(4, ok, 4, F_WRITE | F_NEXT, 5), r.put_desc(5, ok, 4)),
        "indirect length not 16n": lambda: r.put_desc(4, t, 24, F_INDIRECT),
        "empty indirect table": lambda: r.put_desc(4, t, 0, F_INDIRECT),
        "indirect in indirect": lambda: (r.put_desc(0, t, 16, F_INDIRECT, table=t), r.put_desc(4, t, 16, F_INDIRECT)),
        "indirect with next": lambda: r.put_desc(4, t, 16, F_INDIRECT | F_NEXT, 5),
        "indirect after a buffer": lambda: (r.put_desc(4, ok, 4, F_NEXT, 5), r.put_desc(5, t, 16, F_INDIRECT)),
        "indirect table outside memory": lambda: r.put_desc(4, MEM - 16, 32, F_INDIRECT),
        "indirect table across regions": lambda: r.put_desc(4, HALF - 16, 32, F_INDIRECT),
        "loop in indirect table": lambda: (r.put_desc(0, ok, 4, F_NEXT, 1, table=t), r.put_desc(1, ok, 4, F_NEXT, 0, table=t),
                                           r.put_desc(4, t, 32, F_INDIRECT)),
        "next out of indirect table": lambda: (r.put_desc(0, ok, 4, F_NEXT, 2, table=t), r.put_desc(4, t, 32, F_INDIRECT)),
        "oversized indirect table": lambda: r.put_desc(4, 0, 16 * 40000, F_INDIRECT),
    }


MALFORMED = ["loop", "self loop", "next out of range", "address outside memory", "length past the end",
             "huge length", "address wraps", "readable after writable", "indirect length not 16n",
             "empty indirect table", "indirect in indirect", "indirect with next", "indirect after a buffer",
             "indirect table outside memory", "indirect table across regions", "loop in indirect table",
             "next out of indirect table", "oversized indirect table"]


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_chain_is_refused_and_the_queue_goes_on(ring, name, caplog):
    cases = malformed_cases(ring)
    assert sorted(cases) == sorted(MALFORMED)
    cases[name]()
    ring.publish(4)
    good = ring.buf(b"next")
    ring.put_desc(6, good, 4)
    ring.publish(6)
    with caplog.at_level(logging.WARNING, "pyvirtiofsd.virtqueue"):
        assert ring.vq.pop() == (4, None, None)               # give it back used, length 0
    assert "refused descriptor chain at 4" in caplog.text
    ring.vq.push(4, 0)
    head, readable, _ = ring.vq.pop()                          # the next chain is served as usual
    assert (head, joined(readable)) == (6, b"next")
    assert ring.used_elem(0) == (4, 0)


def test_head_out_of_range_and_avail_jump_break_the_queue(ring):
    ring.publish(ring.size)                                    # a head index past the table
    with pytest.raises(BadChain, match="head index"):
        ring.vq.pop()
    r2 = Ring()
    try:
        r2.poke(r2.avail + 2, U16.pack(r2.size + 1))           # more chains than the ring holds
        with pytest.raises(BadChain, match="ahead of"):
            r2.vq.pop()
        r2.poke(r2.avail + 2, U16.pack(r2.size))               # exactly a full ring is fine
        for i in range(r2.size):
            r2.put_desc(i, r2.buf(b"z"), 1)
            r2.poke(r2.avail + 4 + 2 * i, U16.pack(i))
        assert [r2.vq.pop()[0] for _ in range(r2.size)] == list(range(r2.size))
        assert r2.vq.pop() is None
    finally:
        r2.close()


def serve_one(r, head=0):
    r.put_desc(head, r.buf(b"q"), 1)
    r.publish(head)
    got = r.vq.pop()[0]
    r.vq.push(got, 1)


def test_call_is_signalled_once_per_batch_without_event_idx(ring):
    serve_one(ring)
    serve_one(ring, 1)
    ring.vq.notify()
    assert ring.signalled()
    ring.vq.notify()                                           # nothing new used: no signal
    assert not ring.signalled()
    ring.poke(ring.avail, U16.pack(1))                         # VRING_AVAIL_F_NO_INTERRUPT
    serve_one(ring, 2)
    ring.vq.notify()
    assert not ring.signalled()


def test_event_idx_publishes_avail_event_and_honours_used_event():
    r = Ring(event_idx=True)
    try:
        r.set_used_event(0)                                    # "signal me when entry 0 is used"
        serve_one(r)
        assert r.avail_event() == 0                            # no kicks needed while we drain
        assert r.vq.rearm() == 0 and r.avail_event() == 1      # "kick me when you publish past 1"
        r.vq.notify()
        assert r.signalled()
        r.set_used_event(5)                                    # suppressed until used idx passes 5
        for i in range(1, 5):
            serve_one(r, i)
            r.vq.notify()
            assert not r.signalled(), i
        serve_one(r, 5)
        serve_one(r, 6)                                        # used idx 5 -> 7 in one batch crosses 5
        r.vq.notify()
        assert r.signalled()
        r.vq.notify()                                          # and only once
        assert not r.signalled()
        # the avail_event store and the re-check: a chain published late is seen
        assert not r.vq.rearm()
        r.put_desc(7, r.buf(b"late"), 4)
        r.publish(7)
        assert r.vq.rearm() == 1 and r.avail_event() == r.vq.last_avail == 7
    finally:
        r.close()


def test_call_fd_swap_and_no_call_fd(ring):
    new = os.eventfd(0, os.EFD_NONBLOCK)
    assert ring.vq.set_call_fd(new) == ring.call
    serve_one(ring)
    ring.vq.notify()
    assert os.eventfd_read(new) == 1 and not ring.signalled()
    ring.vq.set_call_fd(None)                                  # polling front-end: nobody to signal
    serve_one(ring, 1)
    ring.vq.notify()
    os.close(new)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, MEM + 64), st.integers(0, 1 << 17), st.integers(0, 7),
                          st.integers(0, 9)), min_size=8, max_size=8),
       st.integers(0, 7))
def test_arbitrary_descriptor_tables_never_crash_or_escape(table, head):
    """Whatever the guest writes, pop() returns views inside guest memory
    whose sizes add up to what the descriptors say, or refuses the chain."""
    r = Ring()
    try:
        for i, (addr, length, flags, nxt) in enumerate(table):
            r.put_desc(i, addr, length, flags, nxt)
        r.publish(head)
        got, readable, writable = r.vq.pop()
        assert got == head
        if readable is not None:
            # walk it independently: it was accepted, so it ends within the bound
            descs, idx, limit = [DESC.unpack(r.peek(16 * i, 16)) for i in range(r.size)], head, r.size
            total = 0
            for _ in range(limit):
                addr, length, flags, nxt = descs[idx]
                if flags & F_INDIRECT:
                    descs = [DESC.unpack(r.peek(addr + 16 * i, 16)) for i in range(length // 16)]
                    idx, limit = 0, len(descs)
                    addr, length, flags, nxt = descs[0]
                assert length == 0 or addr + length <= MEM     # empty buffers touch nothing
                total += length
                if not flags & F_NEXT:
                    break
                idx = nxt
            else:
                raise AssertionError("an accepted chain must end")
            assert sum(map(len, readable)) + sum(map(len, writable)) == total
    finally:
        r.close()


def _model_walk(entries, mem_size):
    """The spec's walk of an indirect table, written plainly: the buffers
    (addr, length, writable) in chain order, or None for a refused chain."""
    out, idx, writing = [], 0, False
    for _ in range(len(entries)):
        addr, length, flags, nxt = entries[idx]
        if flags & F_INDIRECT:
            return None
        if flags & F_WRITE:
            writing = True
        elif writing:
            return None
        if length and addr + length > mem_size:
            return None
        out.append((addr, length, bool(flags & F_WRITE)))
        if not flags & F_NEXT:
            return out
        if nxt >= len(entries):
            return None
        idx = nxt
    return None                                                # it loops


def _indirect(r, table, entries, head=3):
    """Publish entries as an indirect table at `table`; the chain's views."""
    for i, e in enumerate(entries):
        r.put_desc(i, *e, table=table)
    r.put_desc(head, table, 16 * len(entries), F_INDIRECT)
    r.publish(head)
    assert r.vq.pending() == 1
    got, (readable, writable, readable_size, writable_size) = r.vq.take()
    assert got == head
    if readable is not None:                                   # (the sizes are kept with the walk)
        assert (readable_size, writable_size) == (sum(map(len, readable)), sum(map(len, writable)))
    return readable, writable


def _assert_walked_as_the_spec_says(r, entries, readable, writable):
    want = _model_walk(entries, MEM)
    if want is None:
        assert readable is None and writable is None
        return
    assert readable is not None, "refused a chain the spec accepts"
    assert joined(readable) == b"".join(r.peek(a, n) for a, n, w in want if not w)
    assert joined(writable) == b"".join(r.peek(a, n) for a, n, w in want if w)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0x40000, 0x40100, 0x40108, HALF - 8, HALF - 1, MEM - 8, MEM + 8]),
                          st.integers(0, 16),
                          st.sampled_from([0, F_NEXT, F_WRITE, F_WRITE | F_NEXT, F_NEXT | F_INDIRECT]),
                          st.integers(0, 9)),
                min_size=1, max_size=9),
       st.lists(st.booleans(), min_size=9, max_size=9), st.sampled_from([HEAP, HALF + 0x1000]))
@pytest.mark.parametrize("walk", WALKS)
def test_indirect_tables_in_order_or_not_are_walked_as_the_spec_says(walk, entries, in_order, table):
    """Linux fills an indirect table in order (entry i chained to i + 1) and
    take() has a fast path for that; any other shape is followed the general
    way. Both must agree with a plain walk: the same bytes in the same
    directions, adjacent buffers merged or not, and the same refusals. The
    table lies in either memory region, the buffers in both."""
    entries = [(a, n, f, i + 1 if keep else nxt)
               for i, ((a, n, f, nxt), keep) in enumerate(zip(entries, in_order))]
    r = Ring()
    try:
        for a in sorted({a for a, *_ in entries if a < MEM}):
            r.poke(a, bytes((a + k) % 251 for k in range(min(16, MEM - a))))
        with table_walk(walk):
            _assert_walked_as_the_spec_says(r, entries, *_indirect(r, table, entries))
    finally:
        r.close()


# -- indirect tables walked before ------------------------------------------------------------
def test_a_table_walked_before_gives_the_buffers_it_names_now(ring):
    """The queue keeps the views of tables it has walked, by their content:
    the same table again gives the same buffers, live (not a copy of their
    bytes); the same place rewritten to name other buffers gives those."""
    a, b, out = ring.buf(b"AAAA"), ring.buf(b"BBBB"), ring.buf(n=8)
    table = ring.buf(n=32)
    names_a = [(a, 4, F_NEXT, 1), (out, 8, F_WRITE, 0)]
    readable, writable = _indirect(ring, table, names_a)
    assert joined(readable) == b"AAAA"
    ring.poke(a, b"aaaa")
    readable, writable = _indirect(ring, table, [(b, 4, F_NEXT, 1), (out, 8, F_WRITE, 0)])
    assert joined(readable) == b"BBBB"
    readable, writable = _indirect(ring, table, names_a)
    assert joined(readable) == b"aaaa"                       # the buffer as it is now
    writable[0][:5] = b"reply"
    assert ring.peek(out, 5) == b"reply"
    elsewhere = ring.buf(n=32)                               # the same content at another address
    readable, _ = _indirect(ring, elsewhere, names_a)
    assert joined(readable) == b"aaaa"


def test_walked_tables_are_bounded_and_forgotten_with_the_memory_table(ring, monkeypatch):
    monkeypatch.setattr(virtqueue, "WALKED_ENTRIES", 64)
    table, out = ring.buf(n=16 * 40), ring.buf(n=8)
    for i in range(60):                                      # distinct tables of two entries, each sent twice
        for _ in range(2):
            readable, _ = _indirect(ring, table, [(HEAP + 0x8000 + i, 1, F_NEXT, 1), (out, 8, F_WRITE, 0)])
            assert joined(readable) == ring.peek(HEAP + 0x8000 + i, 1)
        assert sum(len(k) // 16 for k in ring.vq._walked) <= 64
    assert len(ring.vq._walked) == 32                        # the newest, as many as fit
    big = [(HEAP + 0x9000 + 2 * i, 1, F_NEXT, i + 1) for i in range(39)] + [(out, 8, F_WRITE, 0)]
    for _ in range(2):
        readable, _ = _indirect(ring, table, big)            # 40 entries: the oldest 20 tables make room
    assert len(readable) == 39 and len(ring.vq._walked) == 13
    monkeypatch.setattr(virtqueue, "WALKED_ENTRIES", 16)
    for _ in range(2):                                       # bigger than all: not kept
        readable, _ = _indirect(ring, table, big[:-1] + [(out, 4, F_WRITE, 0)])
    assert len(readable) == 39 and len(ring.vq._walked) == 13
    del readable, _
    # a new memory table (SET_MEM_TABLE): the same table must name buffers in
    # the new memory, and the old mappings must not be kept alive by the queue
    old = ring.mem
    fd = os.memfd_create("guest2")
    os.ftruncate(fd, MEM)
    os.pwrite(fd, os.pread(ring.fd, MEM, 0), 0)
    os.pwrite(fd, b"new!", HEAP + 0x8000)
    new = GuestMemory.from_table([(0, HALF, UADDR, 0), (HALF, HALF, UADDR + HALF, HALF)], [os.dup(fd), os.dup(fd)])
    ring.vq.attach(new)
    old_fd, ring.mem, ring.fd = ring.fd, new, fd
    regions = list(old.regions)
    old.close()
    os.close(old_fd)
    assert all(r.map.closed for r in regions), "the queue still holds views of the old memory"
    readable, _ = _indirect(ring, table, [(HEAP + 0x8000, 4, F_NEXT, 1), (out, 8, F_WRITE, 0)])
    assert joined(readable) == b"new!"


def test_a_table_is_kept_on_its_second_sighting(ring, monkeypatch):
    """A table sent once (a readahead READ into new page-cache pages) is
    walked and forgotten; one sent again is kept; a first sighting too long
    ago is forgotten as well."""
    monkeypatch.setattr(virtqueue, "SIGHTED_TABLES", 4)
    table, out = ring.buf(n=32), ring.buf(n=8)

    def names(i):
        return [(HEAP + 0x8000 + i, 1, F_NEXT, 1), (out, 8, F_WRITE, 0)]
    _indirect(ring, table, names(0))
    assert not ring.vq._walked
    readable, _ = _indirect(ring, table, names(0))
    assert list(ring.vq._walked) == [ring.peek(table, 32)]
    assert joined(readable) == ring.peek(HEAP + 0x8000, 1)
    for i in range(1, 6):                                    # five first sightings: 1 is pushed out
        _indirect(ring, table, names(i))
    assert len(ring.vq._walked) == 1 and len(ring.vq._sighted) == 4
    _indirect(ring, table, names(1))                         # a first sighting again
    assert len(ring.vq._walked) == 1
    _indirect(ring, table, names(5))                         # remembered: kept now
    assert len(ring.vq._walked) == 2


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([HEAP, HALF + 0x1000]), st.binary(min_size=4, max_size=4)),
                min_size=1, max_size=12),
       st.lists(st.lists(st.tuples(st.sampled_from([0x40000, 0x40010, 0x40100, HALF - 8, MEM - 8, MEM + 8]),
                                   st.integers(0, 16),
                                   st.sampled_from([F_NEXT, F_WRITE | F_NEXT, 0, F_WRITE]),
                                   st.integers(0, 5)),
                         min_size=1, max_size=5),
                min_size=4, max_size=4))
@pytest.mark.parametrize("walk", WALKS)
def test_a_sequence_of_tables_old_and_new_is_walked_as_the_spec_says(walk, requests, tables):
    """Requests on one queue, each with one of four table contents, at one of
    two places, the buffers rewritten in between: every walk agrees with a
    plain walk of the table as it is now, refusals included."""
    r = Ring()
    try:
        for which, place, data in requests:
            for a in (0x40000, 0x40010, 0x40100, HALF - 8, MEM - 8):
                r.poke(a, data * 4)
            entries = [(a, n, f, i + 1 if f & F_NEXT and i + 1 < len(tables[which]) else nxt)
                       for i, (a, n, f, nxt) in enumerate(tables[which])]
            with table_walk(walk):
                _assert_walked_as_the_spec_says(r, entries, *_indirect(r, place, entries))
    finally:
        r.close()


# -- the C walk against the Python one, at the edges of the address space ----------------------
class _Region:
    """What the walks use of a memory region: where it starts, its size, a view of it."""

    def __init__(self, gpa, data):
        self.gpa, self.size = gpa, len(data)
        self.map = mmap.mmap(-1, len(data))
        self.map[:] = data
        self.view = memoryview(self.map)
        with virtqueue._ffi.from_buffer(self.view) as p:
            self.addr = int(virtqueue._ffi.cast("uintptr_t", p))


_TOP = (1 << 64) - 0x4000       # a region that ends at the top of the 64-bit address space


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([0, 0x10000, _TOP]),
       st.lists(st.tuples(st.sampled_from([-0x10000, -1, 0, 1, 0x1000, 0x1fff, 0x2000, 0x3ff0, 0x3fff, 0x4000,
                                           1 << 63, (1 << 64) - 1]),
                          st.sampled_from([0, 1, 0x10, 0x1000, 0x2000, 0x4000, 0x4001, (1 << 32) - 1]),
                          st.sampled_from([0, F_NEXT, F_WRITE, F_WRITE | F_NEXT, F_NEXT | F_INDIRECT, F_NEXT | 8]),
                          st.booleans()),
                min_size=1, max_size=40),
       st.integers(0, 1 << 32))
def test_the_c_walk_and_the_python_walk_agree(base, entries, seed):
    """Tables of Linux's shape and of nearly Linux's shape (one entry chained
    elsewhere, a flag too many, an address below the region, a length past its
    end or past 2**64): both walks give the same views, byte counts and refusals."""
    region = _Region(base, random.Random(seed).randbytes(0x4000))
    table = b"".join(DESC.pack((base + off) % (1 << 64), length, flags, i + 1 if in_order else 0)
                     for i, (off, length, flags, in_order) in enumerate(entries))

    def walked(which):
        vq = Virtqueue(1)
        vq.mem = GuestMemory([])            # no regions: the general walk refuses whatever leaves `region`
        with table_walk(which):
            try:
                readable, writable, nr, nw = vq._walk_table(table, region)
            except (BadChain, virtqueue.BadAddress):
                return None
        return [bytes(v) for v in readable], [bytes(v) for v in writable], nr, nw
    got = walked("c")
    event("accepted" if got is not None else "refused")
    assert got == walked("python")


def test_the_c_walk_serves_linux_tables_itself():
    """A READ as readahead sends it (two readable headers, the reply header,
    pages partly adjacent) is walked by the C helper, not handed back to the
    general walk: its runs, adjacent pages joined, and the bytes each way."""
    pages = [0x9000, 0xa000, 0x3000, 0x7000, 0x8000]
    entries = [(0x100, 40, F_NEXT, 1), (0x128, 40, F_NEXT, 2), (0x200, 16, F_WRITE | F_NEXT, 3)]
    entries += [(p, 0x1000, F_WRITE | (F_NEXT if i < 4 else 0), 4 + i) for i, p in enumerate(pages)]
    table = b"".join(DESC.pack(0x40000 + a, n, f, nxt) for a, n, f, nxt in entries)
    out = virtqueue._ffi.new("uint64_t[]", 3 + 2 * len(entries))
    n = virtqueue.walk_in_c(table, len(entries), 0x40000, 0x10000, out)
    assert n == 5
    assert virtqueue._ffi.unpack(out, 3 + 2 * n) == [
        1, 80, 16 + 5 * 0x1000,
        0x100, 0x150,                       # the two readable headers, adjacent
        0x200, 0x210, 0x9000, 0xb000, 0x3000, 0x4000, 0x7000, 0x9000]
    # one step off Linux's shape, and it is the general walk's
    assert virtqueue.walk_in_c(table[:-16], len(entries) - 1, 0x40000, 0x10000, out) == -1
