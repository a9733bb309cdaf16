"""Guest memory translation: every address and length is checked against
the region table; ranges may span adjacent regions; nothing outside is
reachable."""
import mmap
import os

import pytest
from hypothesis import given, strategies as st

from pyvirtiofsd.device.memory import BadAddress, GuestMemory

PAGE = mmap.PAGESIZE


def memory(layout):
    """layout: [(gpa, size, uaddr)] over one memfd, regions back to back in it."""
    fd = os.memfd_create("t")
    total = sum(size for _, size, _ in layout)
    os.ftruncate(fd, total)
    os.pwrite(fd, bytes(range(256)) * (total // 256), 0)
    entries, off = [], 0
    for gpa, size, uaddr in layout:
        entries.append((gpa, size, uaddr, off))
        off += size
    return GuestMemory.from_table(entries, [os.dup(fd) for _ in entries]), fd


LAYOUT = [(0, 4 * PAGE, 0x10000000), (4 * PAGE, 2 * PAGE, 0x20000000), (0x100000, PAGE, 0x30000000)]


def test_translation_spans_adjacent_regions_and_maps_offsets():
    mem, fd = memory(LAYOUT)
    views = mem.translate(4 * PAGE - 10, 20)
    assert [len(v) for v in views] == [10, 10]
    assert b"".join(bytes(v) for v in views) == os.pread(fd, 20, 4 * PAGE - 10)
    (v,) = mem.translate(0x100000 + 5, 3)
    assert bytes(v) == os.pread(fd, 3, 6 * PAGE + 5)          # third region starts at file offset 6 pages
    v[0] = 0xAB                                               # writes reach the shared memory
    assert os.pread(fd, 1, 6 * PAGE + 5) == b"\xab"
    assert bytes(mem.user_view(0x20000000 + 1, 2)) == os.pread(fd, 2, 4 * PAGE + 1)
    mem.close()


@pytest.mark.parametrize("gpa, length", [
    (6 * PAGE, 1),                 # the hole between regions
    (6 * PAGE - 1, 2),             # runs into the hole
    (0x100000 + PAGE, 1),          # past the last region
    (0x100000 + PAGE - 1, 2),
    ((1 << 64) - 1, 2),            # wraps
    (-1, 1),
    (0, -5),
])
def test_addresses_outside_the_table_are_refused(gpa, length):
    mem, _ = memory(LAYOUT)
    with pytest.raises(BadAddress):
        mem.translate(gpa, length)
    mem.close()


def test_user_addresses_and_contiguity_are_checked():
    mem, _ = memory(LAYOUT)
    with pytest.raises(BadAddress):
        mem.user_view(0x10000000 + 4 * PAGE - 4, 8)       # a ring may not cross a region's end
    with pytest.raises(BadAddress):
        mem.user_view(0x0FFFFFFF, 1)
    with pytest.raises(BadAddress):
        mem.contiguous(4 * PAGE - 8, 16)                   # an indirect table may not span regions
    mem.close()


def test_table_with_too_few_fds_is_refused():
    fd = os.memfd_create("t")
    os.ftruncate(fd, PAGE)
    with pytest.raises(BadAddress):
        GuestMemory.from_table([(0, PAGE, 0, 0), (PAGE, PAGE, PAGE, 0)], [fd])


@given(st.integers(0, 8 * PAGE), st.integers(0, 3 * PAGE))
def test_translation_never_returns_more_or_less_than_asked(gpa, length):
    mem, fd = memory(LAYOUT[:2])
    try:
        views = mem.translate(gpa, length)
    except BadAddress:
        assert gpa + length > 6 * PAGE
    else:
        assert length == 0 or gpa + length <= 6 * PAGE    # an empty range needs no memory
        assert sum(len(v) for v in views) == length
        assert b"".join(bytes(v) for v in views) == os.pread(fd, length, gpa)
    finally:
        mem.close()
        os.close(fd)


def test_mmap_offset_inside_a_page_and_past_the_file_end():
    fd = os.memfd_create("t")
    os.ftruncate(fd, 3 * PAGE)
    os.pwrite(fd, b"hello", PAGE + 100)
    mem = GuestMemory.from_table([(0x1000, PAGE, 0x5000, PAGE + 100)], [os.dup(fd)])   # not page aligned
    assert bytes(mem.translate(0x1000, 5)[0]) == b"hello"
    assert bytes(mem.user_view(0x5000, 5)) == b"hello"
    with pytest.raises(BadAddress):
        mem.translate(0x1000 + PAGE - 1, 2)
    mem.close()
    with pytest.raises((ValueError, OSError)):                 # the region would reach past the file
        GuestMemory.from_table([(0, 2 * PAGE, 0, 2 * PAGE)], [os.dup(fd)])
    os.close(fd)


def test_from_table_takes_ownership_of_the_fds():
    fd = os.memfd_create("t")
    os.ftruncate(fd, PAGE)
    dup = os.dup(fd)
    GuestMemory.from_table([(0, PAGE, 0, 0)], [dup]).close()
    with pytest.raises(OSError):
        os.fstat(dup)                                          # closed: the mapping keeps the memory
    with pytest.raises(BadAddress):                            # wraps the guest-physical space
        GuestMemory.from_table([((1 << 64) - PAGE, 2 * PAGE, 0, 0)], [os.dup(fd)])
    os.close(fd)


def test_negative_and_empty_user_ranges():
    mem, fd = memory(LAYOUT)
    with pytest.raises(BadAddress):
        mem.user_view(0x10000000, -1)
    with pytest.raises(BadAddress):
        mem.user_view(-4, 8)
    assert len(mem.user_view(0x10000000, 0)) == 0
    assert mem.translate(12345678, 0) == []                    # nothing asked, nothing touched
    mem.close()
    with pytest.raises(BadAddress):                            # a closed table maps nothing
        mem.translate(0, 1)
    os.close(fd)


def test_closing_while_a_view_is_held_keeps_that_view_valid():
    mem, fd = memory(LAYOUT[:1])
    (v,) = mem.translate(0, 4)
    mem.close()                                                # a deferred reply may still hold v
    v[0] = 7
    assert os.pread(fd, 1, 0) == b"\x07"
    v.release()
    os.close(fd)
