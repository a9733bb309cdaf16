"""Reader/Writer over scatter-gather lists: the same bytes whatever the split."""
import pytest
from hypothesis import given, strategies as st

from pyvirtiofsd.protocol.buffers import Reader, ShortBuffer, Writer


def split(data, cuts):
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    parts, prev = [], 0
    for c in cuts + [len(data)]:
        parts.append(bytearray(data[prev:c]))
        prev = c
    return parts


@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6),
       st.lists(st.integers(0, 50), max_size=20))
def test_reader_reads_the_same_bytes_whatever_the_split(data, cuts, sizes):
    r = Reader(split(data, cuts))
    got = bytearray()
    for n in sizes:
        if n > r.left:
            with pytest.raises(ShortBuffer):
                r.read(n)
            continue
        got += r.read(n)
    got += r.read_all()
    assert bytes(got) == data and r.left == 0


@given(st.binary(min_size=1, max_size=300), st.lists(st.integers(0, 400), max_size=6), st.integers(0, 300))
def test_reader_views_alias_the_buffers(data, cuts, n):
    parts = split(data, cuts)
    r = Reader(parts)
    views = r.views(n)
    assert b"".join(bytes(v) for v in views) == data[:n]
    assert r.left == max(0, len(data) - n)
    if views and len(views[0]):
        views[0][0] ^= 0xFF             # no copy: the change shows in the source
        assert any(p for p in parts) and bytes(b"".join(parts))[0] == data[0] ^ 0xFF


@given(st.lists(st.binary(max_size=40), max_size=12), st.lists(st.integers(0, 400), max_size=6))
def test_writer_writes_across_buffers_and_patches(chunks, cuts):
    total = sum(map(len, chunks))
    parts = split(bytes(total + 16), cuts)
    w = Writer(parts)
    w.views(16)
    for c in chunks:
        w.write(c)
    w.patch(0, bytes(range(16)))
    out = b"".join(bytes(p) for p in parts)
    assert out == bytes(range(16)) + b"".join(chunks)
    assert w.written == total + 16 and w.available() == 0
    with pytest.raises(ShortBuffer):
        w.write(b"x")


def test_writer_truncate_and_views():
    buf1, buf2 = bytearray(5), bytearray(5)
    w = Writer([buf1, buf2])
    w.write(b"abc")
    vs = w.views(100)
    assert [len(v) for v in vs] == [2, 5] and w.written == 10
    w.truncate(4)
    w.write(b"XY")
    assert bytes(buf1) == b"abc\0X" and bytes(buf2[:1]) == b"Y"
    with pytest.raises(ValueError):
        w.patch(5, b"123")


def test_reader_short_struct_read_raises():
    import struct
    r = Reader([b"\x01\x02"])
    with pytest.raises(ShortBuffer):
        r.read_struct(struct.Struct("<I"))


@given(st.lists(st.integers(1, 24), min_size=1, max_size=8), st.data())
def test_structs_and_writes_that_fill_their_buffers_exactly(sizes, data):
    """A guest often puts each struct in a buffer of its own (Linux sends the
    FUSE header and each argument separately): reading or writing exactly a
    buffer's worth moves on to the next one, whatever comes after."""
    import struct
    payload = bytes(range(sum(sizes))) + b"tail"
    bounds = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    cuts = [b for b in bounds if data.draw(st.booleans())]
    r = Reader(split(payload, cuts))
    pos = 0
    for n in sizes:
        assert r.read_struct(struct.Struct(f"{n}s")) == (payload[pos:pos + n],)
        pos += n
    assert r.left == 4 and r.read_all() == b"tail"
    parts = split(bytes(len(payload)), cuts)
    w = Writer(parts)
    for i, n in enumerate(sizes):
        w.write(payload[sum(sizes[:i]):sum(sizes[:i]) + n])
    w.write(b"tail")
    assert b"".join(bytes(p) for p in parts) == payload and w.available() == 0
    with pytest.raises(ShortBuffer):
        w.write(b"x")


@given(st.lists(st.integers(0, 30), min_size=1, max_size=6), st.lists(st.integers(0, 40), max_size=8))
def test_writer_views_reserve_exactly_what_is_asked(sizes, asks):
    """views(n) hands out the next min(n, room) bytes of the buffers, in
    order; views(0) hands out no view at all."""
    parts = [bytearray(n) for n in sizes]
    w = Writer(parts)
    pos = 0
    for n in asks:
        views = w.views(n)
        got = sum(map(len, views))
        assert got == min(n, sum(sizes) - pos) == w.written - pos
        if n == 0:
            assert views == []
        for v in views:
            v[:] = bytes((pos + i) % 251 for i in range(len(v)))
            pos += len(v)
    assert b"".join(parts)[:pos] == bytes(i % 251 for i in range(pos))
