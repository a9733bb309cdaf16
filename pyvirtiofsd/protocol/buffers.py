"""Reader and Writer over scatter-gather lists of memoryviews.

A transport hands the protocol layer one Reader (the request bytes) and one
Writer (room for the reply). On virtio these are slices of guest memory; on
/dev/fuse a plain buffer. The protocol layer never sees guest addresses and
moves file data with preadv/pwritev straight into or out of these views.
"""
import errno


class ShortBuffer(OSError):
    """The request is shorter than its header says, or the reply does not fit."""

    def __init__(self, what="buffer too short"):
        super().__init__(errno.EINVAL, what)


def _byte_views(bufs):
    """Flat byte memoryviews of bufs (guest memory slices already are)."""
    return [b if type(b) is memoryview and b.format == "B" and b.ndim == 1 else memoryview(b).cast("B")
            for b in bufs]


def _rest(bufs, idx, off):
    """Everything from (idx, off) on, as views, without walking the list."""
    return bufs[idx:] if not off else [bufs[idx][off:], *bufs[idx + 1:]]


def _take(bufs, idx, off, n):
    """Collect up to n bytes as views starting at (idx, off); return views, idx, off."""
    out = []
    nbufs = len(bufs)
    if off and idx < nbufs:                 # the rest of a partly used buffer
        b = bufs[idx]
        k = min(len(b) - off, n)
        out.append(b[off:off + k])
        n -= k
        off += k
        if off == len(b):
            idx, off = idx + 1, 0
    while n > 0 and idx < nbufs:            # whole buffers go as they are
        b = bufs[idx]
        lb = len(b)
        if lb > n:
            out.append(b[:n])
            return out, idx, n
        out.append(b)
        n -= lb
        idx += 1
    return out, idx, off


class Reader:
    __slots__ = ("_bufs", "_idx", "_off", "left")

    def __init__(self, bufs, flat=False, size=None):
        """flat: bufs are already 1-D byte memoryviews (guest memory is);
        size: their length in all, if the caller knows it."""
        self._bufs = bufs = bufs if flat else _byte_views(bufs)
        self._idx = 0
        self._off = 0
        self.left = sum(map(len, bufs)) if size is None else size     # bytes not read yet (read-only outside)

    def read(self, n: int) -> bytes:
        """Exactly n bytes, or ShortBuffer."""
        if n > self.left:
            raise ShortBuffer("request truncated")
        b = self._bufs[self._idx] if self._idx < len(self._bufs) else None
        if b is not None and len(b) - self._off >= n:
            out = bytes(b[self._off:self._off + n])
            self._off += n
            if self._off == len(b):
                self._idx += 1
                self._off = 0
            self.left -= n
            return out
        views, self._idx, self._off = _take(self._bufs, self._idx, self._off, n)
        self.left -= n
        return b"".join(views)

    def read_struct(self, st):
        n, idx = st.size, self._idx
        if idx < len(self._bufs):               # within one buffer: unpack in place
            b, off = self._bufs[idx], self._off
            left = len(b) - off
            if left >= n:
                if left == n:                   # (a guest often sends each struct in its own buffer)
                    self._idx, self._off = idx + 1, 0
                else:
                    self._off = off + n
                self.left -= n
                return st.unpack_from(b, off)
        return st.unpack(self.read(n))

    def read_all(self) -> bytes:
        return self.read(self.left)

    def views(self, n: int):
        """Up to n bytes as memoryviews without copying (for pwritev)."""
        if n >= self.left:                  # the rest (a WRITE's data): no walk
            views = _rest(self._bufs, self._idx, self._off)
            self._idx, self._off, self.left = len(self._bufs), 0, 0
            return views
        views, self._idx, self._off = _take(self._bufs, self._idx, self._off, n)
        self.left -= n
        return views

    def skip(self, n: int):
        if n > self.left:
            raise ShortBuffer("request truncated")
        self.views(n)


class Writer:
    """Reply buffer. Bytes go in order; the header slot can be patched later."""
    __slots__ = ("_bufs", "_idx", "_off", "written", "capacity")

    def __init__(self, bufs, flat=False, size=None):
        """As Reader's."""
        self._bufs = bufs = bufs if flat else _byte_views(bufs)
        self._idx = 0
        self._off = 0
        self.written = 0
        self.capacity = sum(map(len, bufs)) if size is None else size

    def available(self) -> int:
        return self.capacity - self.written

    def write(self, data) -> None:
        n = len(data)
        if n > self.capacity - self.written:
            raise ShortBuffer("reply does not fit the buffer")
        if self._idx < len(self._bufs):
            b, off = self._bufs[self._idx], self._off
            left = len(b) - off
            if left >= n:
                b[off:off + n] = data
                if left == n:
                    self._idx, self._off = self._idx + 1, 0
                else:
                    self._off = off + n
                self.written += n
                return
        src = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
        pos = 0
        for v in self.views(n):
            v[:] = src[pos:pos + len(v)]
            pos += len(v)

    def pack(self, st, *values) -> None:
        self.write(st.pack(*values))

    def skip(self, n: int) -> None:
        """Reserve n bytes to fill in later with patch (the reply header)."""
        idx = self._idx
        if idx < len(self._bufs):
            left = len(self._bufs[idx]) - self._off
            if left >= n:
                if left == n:               # (Linux gives the reply header a buffer of its own)
                    self._idx, self._off = idx + 1, 0
                else:
                    self._off += n
                self.written += n
                return
        self.views(n)

    def views(self, n: int):
        """Reserve up to n bytes and return them as memoryviews (for preadv).
        They count as written; call truncate() if fewer were filled."""
        n = min(n, self.capacity - self.written)
        if n <= 0:
            return []
        self.written += n
        idx, off, bufs = self._idx, self._off, self._bufs
        if idx < len(bufs):                 # within the current buffer (a reply header, a page)
            b = bufs[idx]
            left = len(b) - off
            if left > n:
                self._off = off + n
                return [b[off:off + n]]
            if left == n:
                self._idx, self._off = idx + 1, 0
                return [b[off:] if off else b]
            if self.written == self.capacity:   # all the rest (a big READ): no walk
                self._idx, self._off = len(bufs), 0
                return _rest(bufs, idx, off)
        views, self._idx, self._off = _take(bufs, idx, off, n)
        return views

    def truncate(self, length: int) -> None:
        """Forget everything after `length` bytes."""
        if length > self.written:
            raise ValueError("truncate beyond written")
        self._idx, self._off, self.written = 0, 0, 0
        if length:
            self.views(length)

    def patch(self, pos: int, data) -> None:
        """Overwrite already-written bytes at pos (the reply header)."""
        if pos + len(data) > self.written:
            raise ValueError("patch beyond written")
        first = self._bufs[0]
        if pos + len(data) <= len(first):       # the reply header: always here on virtio
            first[pos:pos + len(data)] = data
            return
        i, off = 0, pos
        while off >= len(self._bufs[i]):
            off -= len(self._bufs[i])
            i += 1
        views, _, _ = _take(self._bufs, i, off, len(data))
        p = 0
        for v in views:
            v[:] = data[p:p + len(v)]
            p += len(v)
