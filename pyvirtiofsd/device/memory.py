"""Guest memory: the regions the front-end shares with SET_MEM_TABLE, mapped
here, and bounds-checked translation of guest addresses to memoryviews.

Descriptors carry guest-physical addresses; ring addresses from
SET_VRING_ADDR are the front-end's own virtual addresses. Both are looked up
in the region table; anything outside it, or overflowing, is refused.
"""
import bisect
import mmap
import os

try:        # the C table walk's I/O needs the address of each mapping (guest_buffers.py)
    from ._tablewalk import ffi as _ffi
except ImportError:
    _ffi = None


class BadAddress(Exception):
    """A guest address or length that the memory table does not cover."""


class Region:
    __slots__ = ("gpa", "size", "uaddr", "map", "map_start", "view", "addr")

    def __init__(self, gpa, size, uaddr, mmap_offset, fd):
        if size <= 0:
            raise BadAddress(f"empty memory region at {gpa:#x}")
        self.gpa, self.size, self.uaddr = gpa, size, uaddr
        # the mapping must include mmap_offset; map from the page holding it
        page_off = mmap_offset - mmap_offset % mmap.ALLOCATIONGRANULARITY
        lead = mmap_offset - page_off
        self.map = mmap.mmap(fd, size + lead, flags=mmap.MAP_SHARED,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=page_off)
        self.map_start = lead       # where gpa sits in self.map
        self.view = memoryview(self.map)[lead:lead + size]
        self.addr = None            # where gpa is mapped here, as a number
        if _ffi is not None:
            with _ffi.from_buffer(self.view) as p:
                self.addr = int(_ffi.cast("uintptr_t", p))

    def close(self):
        self.view.release()
        try:
            self.map.close()
        except BufferError:       # a worker still holds a view; the map goes when it does
            pass


class GuestMemory:
    def __init__(self, regions=()):
        self.regions = sorted(regions, key=lambda r: r.gpa)
        self._starts = [r.gpa for r in self.regions]
        self._by_uaddr = sorted(self.regions, key=lambda r: r.uaddr)
        self._ustarts = [r.uaddr for r in self._by_uaddr]
        self.last_region = None  # the region the previous translation hit

    @classmethod
    def from_table(cls, entries, fds):
        """entries: [(gpa, size, uaddr, mmap_offset)], one fd each."""
        if len(entries) != len(fds):
            raise BadAddress(f"{len(entries)} regions but {len(fds)} file descriptors")
        regions = []
        try:
            for (gpa, size, uaddr, off), fd in zip(entries, fds):
                if gpa + size > 1 << 64 or uaddr + size > 1 << 64:
                    raise BadAddress("region wraps around the address space")
                regions.append(Region(gpa, size, uaddr, off, fd))
        except BaseException:
            for r in regions:
                r.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        return cls(regions)

    def close(self):
        for r in self.regions:
            r.close()
        self.regions = []
        self._starts = self._ustarts = []
        self._by_uaddr = []
        self.last_region = None

    def translate(self, gpa: int, length: int) -> list:
        """[gpa, gpa+length) as memoryviews (several if it spans adjacent regions)."""
        out = []
        self.translate_into(out, gpa, length)
        return out

    def translate_into(self, out: list, gpa: int, length: int) -> None:
        """Append the views of [gpa, gpa+length) to out (the chain walk's hot path)."""
        r = self.last_region
        if r is not None:
            off = gpa - r.gpa
            if off >= 0 and length > 0 and off + length <= r.size:
                out.append(r.view[off:off + length])
                return
        if length < 0 or gpa < 0 or gpa + length > 1 << 64:
            raise BadAddress(f"bad range {gpa:#x}+{length:#x}")
        while length > 0:
            i = bisect.bisect_right(self._starts, gpa) - 1
            if i < 0:
                raise BadAddress(f"guest address {gpa:#x} is not in guest memory")
            r = self.regions[i]
            off = gpa - r.gpa
            if off >= r.size:
                raise BadAddress(f"guest address {gpa:#x} is not in guest memory")
            n = min(length, r.size - off)
            out.append(r.view[off:off + n])
            self.last_region = r
            gpa += n
            length -= n

    def contiguous(self, gpa: int, length: int) -> memoryview:
        """One view for a structure that must not cross regions (indirect tables)."""
        views = []
        self.translate_into(views, gpa, length)
        if len(views) != 1:
            raise BadAddress(f"{gpa:#x}+{length:#x} crosses memory regions")
        return views[0]

    def user_view(self, uaddr: int, length: int) -> memoryview:
        """A front-end virtual address range (ring addresses), in one region."""
        if length < 0 or uaddr < 0:
            raise BadAddress(f"bad range {uaddr:#x}+{length:#x}")
        i = bisect.bisect_right(self._ustarts, uaddr) - 1
        if i < 0:
            raise BadAddress(f"front-end address {uaddr:#x} is not in guest memory")
        r = self._by_uaddr[i]
        off = uaddr - r.uaddr
        if off + length > r.size:
            raise BadAddress(f"front-end address {uaddr:#x}+{length:#x} is not in guest memory")
        return r.view[off:off + length]
