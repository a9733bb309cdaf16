"""Where a request's time goes, in our daemon and in the reference, under the
same guest. The kernel's raw syscall tracepoints (tracefs) record every
system call of the daemon and of QEMU while the guest runs a workload; each
wake-up of the daemon's serving thread is then cut into steps:

  kick -> wake   QEMU writes the queue's kick eventfd; the daemon returns
                 from epoll_wait/ppoll/poll
  before work    from the wake-up to the first system call that does the
                 request's work (not an eventfd, futex or wait): reading
                 the ring, decoding, dispatch
  work           from that call's start to the end of the last such call
                 before the reply is signalled (for seq: the one preadv or
                 pwritev of the request)
  after work     from there to the write of the call eventfd: encoding the
                 reply, the used ring
  call -> sleep  from that write until the daemon waits again
  call -> QEMU   until QEMU reads the call eventfd
  QEMU -> kick   the guest's turn, until the next kick
  cycle          kick to next kick
Medians in µs. For seq only wake-ups that moved 64 KiB or more count, split
into write and read; for meta every wake-up with work in it. Needs root.

    python bench/timeline.py [--workload seq|meta] [--cache never] [--rounds 2]
                             [--compare TREE]

--compare TREE sets our daemon against itself as checked out in TREE
(another work tree of this repository, e.g. `git worktree add /tmp/base
HEAD~1`) instead of the reference: how a change moves each step. Our
daemon runs as `python -m pyvirtiofsd` from the tree's directory.

Writes bench/results/timeline-<stamp>.json and .md.
"""
import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "qemu-tests"))
import guest  # noqa: E402
import run    # noqa: E402

TRACEFS = "/sys/kernel/tracing"
COMMS = 'comm ~ "qemu*" || comm ~ "python*" || comm ~ "virtiofsd*"'
# x86_64 system call numbers
READ, WRITE, FUTEX = 0, 1, 202
WAITS = {7, 232, 271, 281, 441}                 # poll, epoll_wait, ppoll, epoll_pwait, epoll_pwait2
WRITES, READS = {18, 20, 296, 328}, {17, 19, 295, 327}     # pwrite64 writev pwritev pwritev2, and the reads
BIG = 64 << 10
WORKLOADS = {
    "seq": "cd /mnt; fsbench seqwrite /mnt/seq.bin {mib}; echo 3 > /proc/sys/vm/drop_caches; "
           "fsbench seqread /mnt/seq.bin",
    "meta": "cd /mnt; fsbench meta /mnt/meta {files}",
}
STEPS = {"kick -> wake": ("kick", "wake"), "before work": ("wake", "work"), "work": ("work", "work end"),
         "after work": ("work end", "call"), "call -> sleep": ("call", "sleep"), "call -> QEMU": ("call", "qemu"),
         "QEMU -> kick": ("qemu", "next kick"), "cycle": ("kick", "next kick")}
LINE = re.compile(r"\s*(.+?)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): sys_(enter|exit): NR (\d+) (?:\((.*)\)|= (-?\d+))")


def _put(path, text):
    with open(os.path.join(TRACEFS, path), "w") as f:
        f.write(text)


def _events(on):
    for side in ("sys_enter", "sys_exit"):
        _put(f"events/raw_syscalls/{side}/filter", COMMS if on else "0")
        _put(f"events/raw_syscalls/{side}/enable", "1" if on else "0")


def session_threads(sid):
    """Thread ids of every process in session sid (the reference forks into
    a sandbox: its serving threads are in a child)."""
    out = set()
    for pid, _ in run.session_stats(sid):
        try:
            out.update(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except OSError:                 # (it exited meanwhile)
            continue
    return out


def traced_boot(daemon, cache, script, fsbench, tree=None):
    """Boot a guest running script against daemon (ours from tree, if
    given) with system calls traced; -> (trace lines, the daemon's thread
    ids, the guest's console)."""
    if not os.path.isdir(os.path.join(TRACEFS, "events")):
        os.system(f"mount -t tracefs nodev {TRACEFS}")
    _put("tracing_on", "0")
    _put("trace", "")
    _put("buffer_size_kb", "262144")
    tids = set()

    def on_console(text, daemons):
        if not tids and "TIMELINE-START" in text:
            tids.update(session_threads(daemons[guest.TAG][0]))
    share = tempfile.mkdtemp(prefix="pyvfs-timeline-")
    os.chmod(share, 0o755)
    os.sync()
    cwd = os.getcwd()
    _events(True)
    try:
        os.chdir(tree or REPO)             # `python -m pyvirtiofsd` imports from here first
        _put("tracing_on", "1")
        r = guest.boot(share, "echo TIMELINE-START; " + script, daemon=daemon, cache=cache, timeout=1200,
                       on_console=on_console, extra_files={"bin/fsbench": fsbench}, mem_mb=1024)
        _put("tracing_on", "0")
        with open(os.path.join(TRACEFS, "trace")) as f:
            lines = f.readlines()
        overrun = 0
        for cpu in os.listdir(os.path.join(TRACEFS, "per_cpu")):
            with open(os.path.join(TRACEFS, "per_cpu", cpu, "stats")) as f:
                overrun += int(re.search(r"overrun: (\d+)", f.read()).group(1))
    finally:
        os.chdir(cwd)
        _put("tracing_on", "0")
        _events(False)
        shutil.rmtree(share, ignore_errors=True)
    if r.rc != 0:
        raise RuntimeError(f"{daemon}: guest failed (rc={r.rc})\n{r.console[-2000:]}")
    if overrun or not tids:
        raise RuntimeError("trace incomplete (the ring buffer overran, or the daemon's threads were not seen)")
    return lines, tids, r.console


def parse(lines):
    """-> [(seconds, comm, tid, entering, syscall number, args or return value)]"""
    out = []
    for line in lines:
        m = LINE.match(line)
        if m:
            comm, tid, ts, side, nr, args, ret = m.groups()
            value = [int(a, 16) for a in args.split(", ")] if side == "enter" else int(ret)
            out.append((float(ts), comm.strip(), int(tid), side == "enter", int(nr), value))
    return out


def _serving_thread(events, tids):
    """The thread of tids that returns from waiting most often."""
    waits = collections.Counter(tid for _, _, tid, enter, nr, _ in events if tid in tids and not enter and nr in WAITS)
    return waits.most_common(1)[0][0]


def _eventfds(events, server):
    """(kick, call): the fd QEMU writes most often just before the server
    wakes, and the fd it reads most often first after the server writes 8
    bytes (QEMU's own numbers for the queue's two eventfds)."""
    kicks, calls, qemu_write, server_wrote = collections.Counter(), collections.Counter(), None, False
    for ts, comm, tid, enter, nr, value in events:
        if comm.startswith("qemu") and enter:
            if nr == WRITE and value[2] == 8:
                qemu_write = value[0]
            elif nr == READ and server_wrote:
                calls[value[0]] += 1
                server_wrote = False
        elif tid == server:
            if not enter and nr in WAITS and qemu_write is not None:
                kicks[qemu_write] += 1
            elif enter and nr == WRITE and value[2] == 8:
                server_wrote = True
    return kicks.most_common(1)[0][0], calls.most_common(1)[0][0]


def wakeups(events, tids):
    """One record per wake-up of the daemon's serving thread: the times of
    the steps above, and for a data transfer its kind and size."""
    server = _serving_thread(events, tids)
    kick_fd, call_fd = _eventfds(events, server)
    records, cur, last_kick, last_args = [], None, None, None
    for ts, comm, tid, enter, nr, value in events:
        if comm.startswith("qemu"):
            if enter and nr == WRITE and value[0] == kick_fd:
                last_kick = ts
                if cur is not None and "qemu" in cur and "next kick" not in cur:
                    cur["next kick"] = ts
            elif enter and nr == READ and value[0] == call_fd and cur is not None and "call" in cur:
                cur.setdefault("qemu", ts)
            continue
        if tid != server:
            continue
        args = value if enter else last_args
        if enter:
            last_args = value
        if nr in WAITS:
            if enter and cur is not None and "call" in cur:
                cur.setdefault("sleep", ts)
            elif not enter:
                if cur is not None and "next kick" in cur:
                    records.append(cur)
                cur = {"kick": last_kick, "wake": ts}
        elif cur is None or "call" in cur:
            continue
        elif nr == FUTEX or (nr in (READ, WRITE) and args[2] == 8):        # locks, eventfds
            if enter and nr == WRITE:
                cur["call"] = ts
        elif enter:
            cur.setdefault("work", ts)
            if nr in WRITES or nr in READS:
                cur["kind"] = "write" if nr in WRITES else "read"
        else:
            cur["work end"] = ts
            if nr in WRITES or nr in READS:
                cur["bytes"] = max(value, 0)
    return [r for r in records if r.get("kick") is not None and "call" in r and "work" in r]


def steps(records):
    """Median µs of each step over records, and their number."""
    out = {}
    for step, (a, b) in STEPS.items():
        xs = [r[b] - r[a] for r in records if a in r and b in r]
        if xs:
            out[step] = round(statistics.median(xs) * 1e6, 1)
    out["wake-ups"] = len(records)
    return out


def by_kind(records, workload):
    if workload == "seq":
        big = [r for r in records if r.get("bytes", 0) >= BIG]
        return {k: steps([r for r in big if r["kind"] == k]) for k in ("write", "read")}
    return {"request": steps(records)}


def markdown(data):
    lines = [f"# Request timeline {data['stamp']}", "",
             f"Workload `{data['workload']}` at cache={data['cache']}, {data['kernel']}, QEMU accel "
             f"{data['accel']}, our daemon at {data.get('ours', '?')}. Median µs per wake-up of each "
             "daemon's serving thread (bench/timeline.py).", ""]
    rounds, names = data["rounds"], data["daemons"]
    if data.get("compared"):
        lines += [f"`base` is our daemon as checked out in {data['compared']}.", ""]
    head = " | ".join(f"{d} {i + 1}" for i in range(len(rounds)) for d in names)
    for kind in rounds[0][names[0]]["steps"]:
        lines += [f"{kind}:", "", f"| step | {head} |", "|---|" + "---|" * len(rounds) * len(names)]
        for step in list(STEPS) + ["wake-ups"]:
            cells = [rnd[d]["steps"][kind].get(step) for rnd in rounds for d in names]
            lines.append(f"| {step} | " + " | ".join("—" if v is None else f"{v:g}" for v in cells) + " |")
        lines.append("")
    for i, rnd in enumerate(rounds):
        lines.append(f"Guest timings, round {i + 1} (s): " + "; ".join(
            f"{d} " + ", ".join(f"{k} {v['seconds']:.3f}" for k, v in rnd[d]["timings"].items())
            for d in names))
    return "\n".join(lines) + "\n"


def _commit(tree):
    r = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="seq", choices=list(WORKLOADS))
    ap.add_argument("--cache", default="never", choices=["never", "auto", "always"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mib", type=int, default=256, help="seq: MiB written, then read")
    ap.add_argument("--files", type=int, default=2000, help="meta: files created, stat'ed, renamed, unlinked")
    ap.add_argument("--compare", metavar="TREE", help="our daemon from TREE instead of the reference")
    ap.add_argument("--out", default=run.RESULTS)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/timeline.py needs root (tracefs)")
    if args.compare and not os.path.isdir(os.path.join(args.compare, "pyvirtiofsd")):
        raise SystemExit(f"{args.compare} holds no pyvirtiofsd package")
    # name: (daemon, tree)
    daemons = {"ours": ("ours", REPO)}
    daemons.update({"base": ("ours", os.path.abspath(args.compare))} if args.compare else
                   {"reference": ("reference", None)})
    fsbench = run.fsbench_binary()
    script = WORKLOADS[args.workload].format(mib=args.mib, files=args.files)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = list(daemons)
    data = {"stamp": stamp, "workload": args.workload, "cache": args.cache, "kernel": guest.kernel()[1],
            "accel": os.environ.get("QEMU_ACCEL", "tcg"), "daemons": names, "ours": _commit(REPO),
            "compared": args.compare and f"{args.compare} (commit {_commit(args.compare)})", "rounds": []}
    for i in range(args.rounds):
        rnd = {}
        for name in (names, names[::-1])[i % 2]:           # each goes first as often
            print(f"timeline: round {i + 1}, {name} ...", flush=True)
            daemon, tree = daemons[name]
            lines, tids, console = traced_boot(daemon, args.cache, script, fsbench, tree)
            rnd[name] = {"steps": by_kind(wakeups(parse(lines), tids), args.workload),
                         "timings": run.parse_timings(console)}
        data["rounds"].append(rnd)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"timeline-{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(data, f, indent=1)
    md = markdown(data)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
