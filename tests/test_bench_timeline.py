"""bench/timeline.py cuts a trace of system calls into the steps of each
request. Here on a trace written by hand, in the kernel's raw_syscalls
format, shaped as a guest's sequential write makes it."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import timeline  # noqa: E402

KICK_QEMU, CALL_QEMU, CALL_OURS = 0xE, 0x11, 0xD


def line(comm, tid, us, enter, nr, *args, ret=0):
    """One trace line, at us microseconds."""
    what = f"sys_enter: NR {nr} ({', '.join(f'{a:x}' for a in args)})" if enter else f"sys_exit: NR {nr} = {ret}"
    return f"{comm}-{tid}     [000] ..... {10 + us / 1e6:.6f}: {what}\n"


def request(t, size):
    """One request at time t (µs): kick at t, the daemon's data call, the
    reply's call, QEMU reading it; -> lines."""
    daemon, vcpu, main = ("python", 200), ("qemu-system-x86", 101), ("qemu-system-x86", 100)
    return [line(*vcpu, t, True, timeline.WRITE, KICK_QEMU, 0x55, 8),
            line(*daemon, t + 10, False, 232, ret=1),                                # wakes
            line(*daemon, t + 12, True, timeline.FUTEX, 0x7F, 0x81, 1),              # a lock: not work
            line(*daemon, t + 13, False, timeline.FUTEX, ret=0),
            line(*daemon, t + 30, True, 328, 9, 0x7F98, 2, 0),                       # pwritev2
            line(*main, t + 50, True, 7, 0x55, 10, 0),                                # QEMU busy meanwhile
            line(*daemon, t + 130, False, 328, ret=size),
            line(*daemon, t + 140, True, timeline.WRITE, CALL_OURS, 0x7F, 8),        # the call
            line(*daemon, t + 142, False, timeline.WRITE, ret=8),
            line(*daemon, t + 145, True, 232, 0xC, 0x7F, 2, 0xFFFFFFFF),             # sleeps
            line(*main, t + 160, True, timeline.READ, CALL_QEMU, 0x7FFD, 0x200)]


def test_a_request_is_cut_into_its_steps():
    lines = ["# tracer: nop\n"]
    for i, size in enumerate([507168, 507168, 32768, 507168]):
        lines += request(400 * i, size)
    lines.append(line("qemu-system-x86", 101, 1600, True, timeline.WRITE, KICK_QEMU, 0x55, 8))
    lines.append(line("python", 200, 1610, False, 232, ret=1))
    records = timeline.wakeups(timeline.parse(lines), {200, 201})
    assert len(records) == 4
    assert [r["bytes"] for r in records] == [507168, 507168, 32768, 507168]
    steps = timeline.by_kind(records, "seq")
    assert steps["read"] == {"wake-ups": 0}
    assert steps["write"] == {"kick -> wake": 10, "before work": 20, "work": 100, "after work": 10,
                              "call -> sleep": 5, "call -> QEMU": 20, "QEMU -> kick": 240, "cycle": 400,
                              "wake-ups": 3}
    assert timeline.by_kind(records, "meta")["request"]["wake-ups"] == 4


def test_the_serving_thread_and_eventfds_are_found_in_the_trace():
    lines = [line("python", 201, 5, False, 232, ret=1)]         # another thread of the daemon wakes once
    for i in range(3):
        lines += request(400 * i, 4096)
    events = timeline.parse(lines)
    assert timeline._serving_thread(events, {200, 201}) == 200
    assert timeline._eventfds(events, 200) == (KICK_QEMU, CALL_QEMU)


def test_markdown_has_a_row_per_step_and_a_column_per_daemon_and_round():
    rnd = {d: {"steps": {"request": {"cycle": 300.0, "wake-ups": 9}}, "timings": {"meta_stat": {"seconds": 1.5}}}
           for d in ("ours", "reference")}
    md = timeline.markdown({"stamp": "s", "workload": "meta", "cache": "never", "kernel": "k", "accel": "tcg",
                            "daemons": ["ours", "reference"], "rounds": [rnd, rnd]})
    assert "| step | ours 1 | reference 1 | ours 2 | reference 2 |" in md
    assert "| cycle | 300 | 300 | 300 | 300 |" in md
    assert "| before work | — | — | — | — |" in md
    assert "ours meta_stat 1.500" in md


@pytest.mark.skipif(os.geteuid() != 0, reason="tracefs needs root")
def test_parse_reads_the_kernels_own_format():
    """The format string of raw_syscalls on this kernel is what parse() expects."""
    path = os.path.join(timeline.TRACEFS, "events/raw_syscalls/sys_enter/format")
    if not os.path.exists(path):
        os.system(f"mount -t tracefs nodev {timeline.TRACEFS}")
    with open(path) as f:
        fmt = f.read()
    assert 'print fmt: "NR %ld (%lx, %lx, %lx, %lx, %lx, %lx)"' in fmt
    with open(os.path.join(timeline.TRACEFS, "events/raw_syscalls/sys_exit/format")) as f:
        assert 'print fmt: "NR %ld = %ld"' in f.read()
