"""One direction of a chain as the C table walk gives it: runs of guest
memory, (start, stop) offsets in one memory region, checked against it.

To the protocol layer it is a list of memoryviews: indexing, slicing and
iterating make the views one at a time, when asked (a reply header, a
request's arguments). preadv and pwritev (the host back-end's READ and
WRITE) hand the kernel the runs themselves, with no view per page.

It holds a view of the whole region: while it lives the mapping cannot be
closed (Region.close leaves a mapping with views to go with them), so the
addresses it gives the kernel stay mapped.
"""
import errno
import os

from ._tablewalk import lib

_io_runs = lib.io_runs


class GuestBuffers:
    __slots__ = ("_runs", "_first", "_count", "_view", "_addr")

    def __init__(self, runs, first, count, view, addr):
        """runs: the walk's output array (3 words, then a (start, stop) pair
        per run); first, count: the runs that are ours; view: the whole
        region (pinning it); addr: where it is mapped here."""
        self._runs, self._first, self._count, self._view, self._addr = runs, first, count, view, addr

    def __len__(self):
        return self._count

    def __getitem__(self, i):
        if type(i) is slice:
            start, stop, step = i.indices(self._count)
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            return GuestBuffers(self._runs, self._first + start, max(0, stop - start), self._view, self._addr)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError("guest buffer index out of range")
        j = 3 + 2 * (self._first + i)
        runs = self._runs
        return self._view[runs[j]:runs[j + 1]]

    def __iter__(self):
        return map(self.__getitem__, range(self._count))

    def preadv(self, fd, offset):
        """os.preadv(fd, self, offset), without the views."""
        return self._io(fd, offset, 0)

    def pwritev(self, fd, offset):
        return self._io(fd, offset, 1)

    def _io(self, fd, offset, write):
        if not self._count:
            return 0
        if offset < 0:
            raise OSError(errno.EINVAL, "negative offset")
        n = _io_runs(fd, self._addr, self._runs + 3 + 2 * self._first, self._count, offset, write)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        return n
