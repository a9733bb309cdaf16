"""A split virtqueue (virtio 1.x, 2.7): descriptor table, available ring and
used ring in guest memory, with indirect descriptors and EVENT_IDX.

The guest is untrusted: a chain that loops, runs off the table, nests
indirect tables, puts a readable buffer after a writable one, or points
outside guest memory is refused (logged, and returned as used with length 0)
— never followed further. Two faults leave no chain to return: a head index
outside the table and an avail index more than the queue size ahead. Then
pop() and take() raise BadChain and the device stops serving that queue until it is
reset (the spec's "device needs reset" case); other queues go on.

The ring indices are shared with a guest that reads and writes them
concurrently, so each is accessed with one 16-bit load or store, through
memoryviews cast to native integers (virtio is little-endian, as are the
hosts we run on). Never struct.pack_into on them: it zeroes its whole
destination before writing the fields, and a guest that reads the used index
in that window sees it jump back and takes stale used entries ("id N is not
a head!").
"""
import collections
import logging
import os
import struct
import sys
import threading

from .memory import BadAddress

try:        # built at install time (setup.py); without a compiler tables are walked in Python
    from ._tablewalk import ffi as _ffi, lib as _tablewalk
    from .guest_buffers import GuestBuffers
    walk_in_c = _tablewalk.walk_linux_table
except ImportError:
    walk_in_c = None

log = logging.getLogger("pyvirtiofsd.virtqueue")

if sys.byteorder != "little":
    raise ImportError("the virtqueue code reads little-endian rings as native integers")

DESC = struct.Struct("<QIHH")      # addr len flags next
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
AVAIL_F_NO_INTERRUPT = 1
MAX_QUEUE_SIZE = 32768
_NO_VIEW = -(1 << 65)              # below any offset a guest address can give
# Indirect tables walked recently, by content: a guest sends the same table
# again and again (a request struct reused from its slab, a process that does
# direct I/O from one buffer), and a table's views depend on nothing else while
# the memory table stands. Bounded by their entries (a view or two each, some
# 200 bytes), so that a guest's huge tables cannot make it big: a few MB per queue.
WALKED_ENTRIES = 16384
# A table is kept on its second sighting, not its first: many are never seen
# again (a readahead READ names pages of the guest's page cache, new each
# time), and keeping those cost an insertion and, later, an eviction that
# frees views gone cold. What is remembered of a first sighting is the
# table's hash, which only decides whether to keep it (the key of a kept
# walk is the table itself, so a collision cannot give wrong buffers).
SIGHTED_TABLES = 4096


def _sized(walked):
    """(readable, writable) -> (readable, writable, bytes readable, bytes
    writable): summed once per walk, not once per request (a request's
    Reader and Writer would, and a kept table's walk serves many)."""
    readable, writable = walked
    return readable, writable, sum(map(len, readable)), sum(map(len, writable))


_REFUSED = (None, None, 0, 0)      # what take() gives for a malformed chain
# A direction of more runs than this, walked by tablewalk.c in a table seen
# for the first time, is given as GuestBuffers: no view per page, the file
# I/O done on the runs. Fewer are a list of views, which costs less to use.
LAZY_RUNS = 8


def _buffers(region, runs, first, count):
    """Runs first .. first + count of the C walk's output, as the views of
    one direction of a chain."""
    if count > LAZY_RUNS:
        return GuestBuffers(runs, first, count, region.view[:], region.addr)   # (its own view pins the mapping)
    return _views(region.view, _ffi.unpack(runs + (3 + 2 * first), 2 * count))


def _views(view, pairs):
    """Views of view for a flat list of (start, stop) offsets."""
    return list(map(view.__getitem__, map(slice, pairs[::2], pairs[1::2])))


class BadChain(Exception):
    pass


class Virtqueue:
    def __init__(self, index: int):
        self.index = index
        self.size = 0
        self.addrs = None            # (desc, used, avail) front-end addresses
        self.last_avail = 0
        self.used_idx = 0
        self.event_idx = False
        self.kick_fd = None
        self.call_fd = None
        self.enabled = False
        self.desc = self.avail = self.used = None
        self.mem = None
        # the rings as 16-bit words: avail = flags idx ring[size] used_event,
        # used = flags idx {id len}[size] avail_event; used_elems: the {id len}
        # as 64-bit words (id in the low half: little-endian)
        self.avail16 = self.used16 = self.used_elems = None
        self._push_lock = threading.Lock()   # used ring and call fd
        self._signalled_used = 0
        self._fence = threading.Lock()
        self._runs = _ffi.new("uint64_t[]", 3 + 2 * 64) if walk_in_c is not None else None   # the C walk's output
        self.forget_walked()

    def attach(self, mem):
        """Map the rings in guest memory (after SET_VRING_ADDR / SET_MEM_TABLE)."""
        if not self.size or self.addrs is None:
            raise BadAddress("queue size or ring addresses not set")
        desc, used, avail = self.addrs
        n = self.size
        self.desc = mem.user_view(desc, 16 * n)
        self.avail = mem.user_view(avail, 6 + 2 * n)
        self.used = mem.user_view(used, 6 + 8 * n)
        self.avail16 = self.avail.cast("H")
        self.used16 = self.used.cast("H")
        self.used_elems = self.used[4:4 + 8 * n].cast("Q")
        self.mem = mem
        self.forget_walked()
        self.used_idx = self._signalled_used = self.used16[1]

    def detach(self):
        self.desc = self.avail = self.used = self.mem = None
        self.forget_walked()
        self.avail16 = self.used16 = self.used_elems = None

    def forget_walked(self):
        """Drop the views of the tables walked so far (they pin the memory table)."""
        self._walked = collections.OrderedDict()     # table bytes -> what take() returns for it, oldest first
        self._walked_entries = 0
        self._sighted = {}          # hashes of tables walked once and not kept, oldest first

    # -- the available side ---------------------------------------------------------------
    def pending(self) -> int:
        avail_idx = self.avail16[1]
        n = (avail_idx - self.last_avail) & 0xFFFF
        if n > self.size:
            raise BadChain(f"queue {self.index}: avail idx {avail_idx} is {n} ahead of {self.last_avail}")
        return n

    def has_waiting(self) -> bool:
        """Has the guest published chains not taken yet? A peek for another
        queue's worker loop: pending(), which the drain calls, checks the index."""
        return self.avail16[1] != self.last_avail

    def rearm(self) -> int:
        """Before sleeping on the kick fd: how many chains are still waiting?

        With EVENT_IDX the guest kicks only once it passes avail_event. We
        move avail_event here, not at every pop: while we drain, the guest
        need not kick us. The store must be visible before we look at the
        avail index again, or a chain published in between is never kicked;
        taking a lock is a full memory barrier."""
        if self.event_idx:
            self.used16[2 + 4 * self.size] = self.last_avail
            with self._fence:
                pass
        return self.pending()

    def pop(self):
        """Next chain as (head, readable views, writable views), None when empty."""
        if not self.pending():
            return None
        head, (readable, writable, _, _) = self.take()
        return head, readable, writable

    def take(self):
        """The next chain, once pending() said there is one, as (head,
        (readable views, writable views, bytes readable, bytes writable)).
        A malformed chain is returned with views None (push it with len 0);
        a bad head index raises BadChain: the queue cannot go on. The inner
        tuple and its lists may be shared with other chains: read them, never
        change them."""
        last = self.last_avail
        head = self.avail16[2 + last % self.size]
        self.last_avail = (last + 1) & 0xFFFF
        if head >= self.size:
            raise BadChain(f"queue {self.index}: head index {head} outside a table of {self.size}")
        try:
            addr, length, flags, nxt = DESC.unpack_from(self.desc, 16 * head)
            if not flags & F_INDIRECT:
                return head, _sized(self._walk(self.desc, self.size, addr, length, flags, nxt))
            # an indirect table (Linux sends every request in one), in this
            # frame: it is the path every request takes
            if flags & F_NEXT:
                raise BadChain("indirect descriptor chained to others")
            if length == 0 or length % 16 or length // 16 > MAX_QUEUE_SIZE:
                raise BadChain(f"indirect table of {length} bytes")
            region = self.mem.last_region
            off = addr - region.gpa if region is not None else -1
            if off >= 0 and off + length <= region.size:
                start = region.map_start + off          # sliced from the mapping: bytes at once
                table = region.map[start:start + length]
            else:
                table = bytes(self.mem.contiguous(addr, length))
                region = self.mem.last_region
            # One copy of the table: it is both the key and what is walked, so
            # the guest cannot change an entry between the two.
            walked = self._walked.get(table)
            if walked is None:
                walked = self._keep_walked(table, self._walk_table(table, region))
            return head, walked
        except (BadChain, BadAddress) as e:
            log.warning("queue %d: refused descriptor chain at %d: %s", self.index, head, e)
            return head, _REFUSED

    def _keep_walked(self, table, walked):
        sighted = self._sighted
        key = hash(table)                   # (computed once already, by the lookup)
        if key not in sighted:              # first sighting: remembered, not kept
            sighted[key] = None
            if len(sighted) > SIGHTED_TABLES:
                del sighted[next(iter(sighted))]
            return walked
        del sighted[key]
        readable, writable, readable_size, writable_size = walked
        if type(readable) is not list or type(writable) is not list:    # views made once, used again and again
            walked = list(readable), list(writable), readable_size, writable_size
        entries = len(table) // 16
        if entries <= WALKED_ENTRIES:
            self._walked_entries += entries
            while self._walked_entries > WALKED_ENTRIES:
                oldest, _ = self._walked.popitem(last=False)
                self._walked_entries -= len(oldest) // 16
            self._walked[table] = walked
        return walked

    def _walk_table(self, table, region):
        """An indirect table's chain, as take() returns it (_sized)."""
        if walk_in_c is None:
            return _sized(self._walk_table_in_python(table, region))
        entries = len(table) >> 4
        runs = self._runs
        if len(runs) < 3 + 2 * entries:
            runs = self._runs = _ffi.new("uint64_t[]", 3 + 2 * entries)
        n = walk_in_c(table, entries, region.gpa, region.size, runs)
        if n < 0:                       # not of Linux's shape: the general walk says what is wrong
            return _sized(self._walk_any_table(table))
        # runs: readable runs, bytes each way, then (start, stop) per run
        if n <= LAZY_RUNS:              # (most requests): a list of views each way
            got = _ffi.unpack(runs, 3 + 2 * n)
            views = _views(region.view, got[3:])
            k = got[0]
            return views[:k], views[k:], got[1], got[2]
        own = _ffi.new("uint64_t[]", 3 + 2 * n)     # guest buffers keep their runs
        _ffi.memmove(own, runs, 8 * (3 + 2 * n))
        k = own[0]
        return _buffers(region, own, 0, k), _buffers(region, own, k, n - k), own[1], own[2]

    def _walk_table_in_python(self, table, region):
        # What tablewalk.c does, where it was not built. Linux fills a table
        # in order, each entry chained to the next, with non-empty buffers in
        # the region of the table. Such a chain is walked here in one pass,
        # each entry checked against that region; anything else is walked
        # the general way.
        base, size, view = region.gpa, region.size, region.view
        readable, writable = [], []
        out = readable
        stop = _NO_VIEW                  # where the last view ends (offset in the region)
        grown = False                    # buffers were added to the last view since it was sliced
        expect = 1
        for addr, length, flags, nxt in DESC.iter_unpack(table):
            # flags: 1 = NEXT (readable, more follow), 3 = NEXT|WRITE, 0 and 2: the last one
            if flags & 2:
                if out is readable:
                    if grown:
                        readable[-1] = view[first:stop]
                        grown = False
                    out, stop = writable, _NO_VIEW
            elif out is writable:
                break
            start = addr - base
            if start == stop:                # adjacent to the last buffer: one view, sliced once
                stop += length
                if stop > size:
                    break
                grown = True
            else:
                if grown:
                    out[-1] = view[first:stop]
                    grown = False
                first = start
                stop = start + length
                if start < 0 or stop > size or not length:
                    break
                out.append(view[start:stop])
            if flags == 1 or flags == 3:
                if nxt != expect:
                    break
                expect += 1
            elif flags == 0 or flags == 2:
                if grown:
                    out[-1] = view[first:stop]
                return readable, writable
            else:
                break
        return self._walk_any_table(table)

    def _walk_any_table(self, table):
        entries = list(DESC.iter_unpack(table))
        return self._walk(entries, len(entries), *entries[0])

    def _walk(self, table, table_len, addr, length, flags, nxt):
        """Follow a chain through table (the ring's descriptor table, a
        memoryview, or an indirect table as a list of tuples), from its first
        descriptor. Adjacent buffers of one direction become one view (guest
        pages are often physically contiguous), which keeps big READ/WRITE
        chains cheap."""
        if type(table) is list:
            get = table.__getitem__
            if flags & F_INDIRECT:
                raise BadChain("indirect descriptor inside an indirect table")
        else:
            get = lambda i: DESC.unpack_from(table, 16 * i)     # noqa: E731
        translate = self.mem.translate_into
        readable, writable = [], []
        run_start = run_end = 0          # the run of adjacent buffers not yet translated
        run_out = readable
        seen = 0
        while True:
            seen += 1
            if seen > table_len:
                raise BadChain("descriptor chain loops")
            if flags & F_WRITE:
                out = writable
            elif run_out is writable:
                raise BadChain("readable descriptor after a writable one")
            else:
                out = readable
            if addr == run_end and out is run_out:
                run_end += length
            else:
                if run_end > run_start:
                    translate(run_out, run_start, run_end - run_start)
                run_start, run_end, run_out = addr, addr + length, out
            if not flags & F_NEXT:
                break
            if nxt >= table_len:
                raise BadChain(f"next index {nxt} outside a table of {table_len}")
            addr, length, flags, nxt = get(nxt)
            if flags & F_INDIRECT:
                raise BadChain("indirect descriptor inside an indirect table" if type(table) is list
                               else "indirect descriptor chained to others")
        if run_end > run_start:
            translate(run_out, run_start, run_end - run_start)
        return readable, writable

    # -- the used side ----------------------------------------------------------------------
    def push(self, head: int, length: int) -> None:
        with self._push_lock:
            idx = self.used_idx
            self.used_elems[idx % self.size] = head | length << 32     # id, len
            self.used_idx = idx = (idx + 1) & 0xFFFF
            self.used16[1] = idx                    # the guest may take the entry from here on

    def notify(self) -> None:
        """Signal the guest if it wants to hear about the used entries so far."""
        with self._push_lock:       # (acquiring it also orders our used idx store before the loads)
            new, old = self.used_idx, self._signalled_used
            if new == old:
                return
            self._signalled_used = new
            if self.event_idx:
                used_event = self.avail16[2 + self.size]
                # vring_need_event: did new pass used_event since the last check?
                if ((new - used_event - 1) & 0xFFFF) >= ((new - old) & 0xFFFF):
                    return
            elif self.avail16[0] & AVAIL_F_NO_INTERRUPT:
                return
            # written under the lock: set_call_fd may close the old fd meanwhile,
            # and its number could be reused by a file opened for the guest
            if self.call_fd is not None:
                os.eventfd_write(self.call_fd, 1)

    def set_call_fd(self, fd):
        """Replace the call eventfd (QEMU does so on a running queue when the
        guest masks its interrupt); -> the old one, for the caller to close."""
        with self._push_lock:
            old, self.call_fd = self.call_fd, fd
        return old
