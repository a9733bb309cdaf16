"""The VFS lock table against the host kernel's own fcntl locks: the same
sequence of lock/unlock calls by two owners on a real file (open file
description locks, one description per owner) and in LockTable must give
the same answers to every conflict probe."""
import errno
import fcntl
import os
import struct
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from pyvirtiofsd.vfs.locks import OFFSET_MAX, LockTable, Waiter

FLOCK = struct.Struct("hhqqi4x")
TYPES = [fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK]


def kernel_setlk(fd, type_, start, end):
    length = 0 if end == OFFSET_MAX else end - start + 1
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FLOCK.pack(type_, os.SEEK_SET, start, length, 0))
        return 0
    except OSError as e:
        return e.errno


def kernel_getlk(fd, type_, start, end):
    length = 0 if end == OFFSET_MAX else end - start + 1
    out = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, FLOCK.pack(type_, os.SEEK_SET, start, length, 0))
    return FLOCK.unpack(out)[0] != fcntl.F_UNLCK


ranges = st.tuples(st.integers(0, 40), st.integers(0, 12) | st.just(None)).map(
    lambda t: (t[0], OFFSET_MAX if t[1] is None else t[0] + t[1]))
ops = st.lists(st.tuples(st.integers(0, 1), st.sampled_from(TYPES), ranges), max_size=25)
probes = st.lists(st.tuples(st.integers(0, 1), st.sampled_from(TYPES[:2]), ranges), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(ops, probes)
def test_lock_table_agrees_with_kernel_ofd_locks(tmp_path_factory, seq, checks):
    path = tmp_path_factory.mktemp("locks") / "f"
    path.write_bytes(b"")
    fds = [os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)]
    table = LockTable()
    try:
        for owner, type_, (start, end) in seq:
            want = kernel_setlk(fds[owner], type_, start, end)
            try:
                table.setlk("k", owner, 1, start, end, type_)
                got = 0
            except OSError as e:
                got = e.errno
            assert got == want, (owner, type_, start, end)
        for owner, type_, (start, end) in checks:
            blocked = table.getlk("k", owner, start, end, type_) is not None
            assert blocked == kernel_getlk(fds[owner], type_, start, end)
    finally:
        for fd in fds:
            os.close(fd)


def test_blocking_lock_waits_for_release_and_can_be_cancelled():
    table = LockTable()
    table.setlk("k", "a", 1, 0, 10, fcntl.F_WRLCK)
    result = []

    def wait_for_it(waiter):
        try:
            table.setlk("k", "b", 2, 5, 5, fcntl.F_RDLCK, waiter=waiter)
            result.append("granted")
        except OSError as e:
            result.append(errno.errorcode[e.errno])

    t = threading.Thread(target=wait_for_it, args=(Waiter(),))
    t.start()
    time.sleep(0.1)
    assert result == []
    table.release_owner("k", "a")
    t.join(5)
    assert result == ["granted"]

    w = Waiter()
    t = threading.Thread(target=wait_for_it, args=(w,))
    table.release_owner("k", "b")
    table.setlk("k", "c", 3, 0, 100, fcntl.F_WRLCK)
    t.start()
    time.sleep(0.1)
    table.cancel(w)
    t.join(5)
    assert result == ["granted", "EINTR"]


def test_flock_and_posix_locks_are_separate():
    table = LockTable()
    table.setlk("k", "a", 1, 0, OFFSET_MAX, fcntl.F_WRLCK, flock=True)
    table.setlk("k", "b", 2, 0, OFFSET_MAX, fcntl.F_WRLCK)          # no conflict across kinds
    with pytest.raises(OSError) as e:
        table.setlk("k", "b", 2, 0, OFFSET_MAX, fcntl.F_RDLCK, flock=True)
    assert e.value.errno == errno.EAGAIN
    with pytest.raises(OSError):
        table.setlk("k", "a", 1, 5, 1, fcntl.F_WRLCK)                 # end before start
