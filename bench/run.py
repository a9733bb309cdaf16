"""`make bench`: guest workloads on pyvirtiofsd and on the reference C
virtiofsd (/usr/lib/qemu/virtiofsd) side by side, for cache=never/auto/
always; then the same workloads through /dev/fuse on the host against the
host's own file system. Writes bench/results/<stamp>.json (raw) and
<stamp>.md (ratios ours/reference).

Both daemons serve the same guest: one boot per cache mode has a virtio-fs
device of each (and one of ours with two request queues), each daemon on
its own copy of the data, and the guest runs every phase on each in turn,
seconds apart, in rounds whose order alternates. Runs minutes apart, in
boots of their own, differed by tens of per cent for the same daemon; a
phase's two runs seconds apart in one guest make a pair that the
machine's drift moves much less. Whoever runs first in a pair is slower
at big writes (the host gives the second the memory the first just freed),
so the rounds are even in number, each daemon first in half of them, and
the boot's first big write, the slowest, is an unmeasured warm-up.

Wall times are measured inside the guest (bench/fsbench.c). Daemon CPU is
user+sys of every process in the daemon's session, sampled when the guest
prints a run's markers. Requests: ours counts them (SIGUSR1 makes it log
the count); the reference does not, so its count is taken to be ours for
the same phase and round — the guest kernel issues the requests, and it is
the same kernel running the same workload (for the fixed-time random I/O,
scaled by the operations fio did on each). At cache=auto and always the
guest lists our directories without handles and sends the reference
OPENDIR and RELEASEDIR that it does not send us: there the ratio is one of
CPU for the same guest work (docs/performance.md).

A daemon's CPU per request depends on how often requests come: the longer
it sleeps between two, the colder its caches, and a slower daemon is sent
fewer. The fixed-time random I/O compares the two at different rates, so
it is run a second time paced (fio --rate_iops, the same for both, below
what either sustains): CPU per request at equal load.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "qemu-tests"))
import guest  # noqa: E402

BUILD = os.path.join(HERE, ".build")
RESULTS = os.path.join(HERE, "results")
SIZES = {
    "full": dict(files=5000, seq_mib=256, rand_mib=64, rand_secs=10, paced_iops=500, par_files=1250, tree=("Django-4.2.16/tests/", "Django-4.2.16/docs/")),
    "quick": dict(files=500, seq_mib=32, rand_mib=16, rand_secs=3, paced_iops=500, par_files=200, tree=("Django-4.2.16/django/db/",)),
}

# One boot per cache mode serves three devices: ours at /mnt, the reference
# at /ref and ours with two request queues at /ours2q (the parallel phase
# only), each on its own copy of the data. Every phase runs on each in turn,
# seconds apart, in rounds whose order alternates; before each run the
# guest writes back and drops its caches and lets the daemons take the
# FORGETs that sends.
SCRIPT = r"""
mark() {{ echo "BENCH-MARK $1"; }}
settle() {{ sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1; }}
span() {{ name=$1; shift; t0=$(fsbench now); "$@" >/dev/null 2>&1 || echo "BENCH-FAIL $name"; t1=$(fsbench now); echo "$name $(( (t1 - t0) / 1000 ))e-6 0"; }}
randrw() {{     # 4 KiB random r/w on $1/rand.bin for a fixed time; prints "$2 seconds operations"
    dir=$1; timing=$2; shift 2
    fio --name=$timing --filename=$dir/rand.bin --rw=randrw --rwmixread=50 --bs=4k --size={rand_mib}m \
        --runtime={rand_secs} --time_based --ioengine=psync --minimal "$@" > /tmp/fio.out || echo "BENCH-FAIL fio"
    # terse v3: $6/$47 KiB read/written, $9 runtime in ms
    awk -F';' -v t=$timing '{{printf "%s %.3f %d\n", t, $9 / 1000, ($6 + $47) / 4}}' /tmp/fio.out
}}
phase_meta() {{ fsbench meta $1/meta {files}; }}
phase_seq() {{ fsbench seqwrite $1/seq.bin {seq_mib}; echo 3 > /proc/sys/vm/drop_caches; fsbench seqread $1/seq.bin; }}
phase_rand() {{ fsbench seqwrite $1/rand.bin {rand_mib} >/dev/null; randrw $1 rand_rw_4k; }}
phase_paced() {{ randrw $1 rand_paced_4k --rate_iops={paced_iops}; }}
phase_tree() {{
    span tree_untar gnu-tar -xf $1/tree.tar -C $1/tree
    echo 3 > /proc/sys/vm/drop_caches
    span tree_find gnu-find $1/tree
    span tree_ls_lR gnu-ls -lR $1/tree
    span tree_du gnu-du -s $1/tree
    span tree_rm gnu-rm -rf $1/tree
}}
phase_par() {{ fsbench meta-par $1/par {par_files} 4; }}
dir_of() {{ case $1 in ours) echo /mnt;; reference) echo /ref;; ours_2q) echo /ours2q;; esac; }}
run() {{        # run WHO ROUND PHASE
    dir=$(dir_of $1); mkdir -p $dir/tree; settle
    mark $1:$2:$3; phase_$3 $dir; mark $1:$2:$3-end
    rm -rf $dir/meta $dir/par $dir/seq.bin; [ $3 = paced ] && rm -f $dir/rand.bin
}}
mkdir -p /ref /ours2q
mount -t virtiofs ref /ref || echo BENCH-FAIL mount-ref
mount -t virtiofs ours2q /ours2q || echo BENCH-FAIL mount-ours2q
# Unmeasured: neither daemon's first requests are counted cold, and the boot's
# first big write (twice as slow as the next, whoever makes it) is nobody's.
for who in ours reference ours_2q; do
    dir=$(dir_of $who); fsbench seqwrite $dir/warm.bin {seq_mib} >/dev/null; fsbench meta $dir/warm 200 >/dev/null
    rm -rf $dir/warm.bin $dir/warm
done
for round in $(seq 1 {repeat}); do
    if [ $((round % 2)) = 1 ]; then order="ours reference"; else order="reference ours"; fi
    for phase in {phases}; do
        for who in $order; do run $who $round $phase; done
        [ $phase = par ] && run ours_2q $round par
    done
done
umount /ref; umount /ours2q
"""
GROUPS = ["meta", "seq", "rand", "paced", "tree", "par"]
FIO_RUNS = {"rand": "rand_rw_4k", "paced": "rand_paced_4k"}    # phase -> its fio timing
PACED = FIO_RUNS["paced"]     # its time is the pace's: no wall-time ratio


def fsbench_binary():
    return guest.static_binary(os.path.join(HERE, "fsbench.c"), BUILD)


# the tree workload's tools, GNU's as a distribution's guest has them, not
# busybox's: busybox tar makes every member's parent directories again from
# the top (a stat of each level of the path), and its find, ls and du stat
# each entry by its full path; at cache=never every level of such a path is
# a LOOKUP, some 300 requests per file of a deep tree against a dozen
GNU_TOOLS = ("tar", "find", "ls", "du", "rm")


def guest_tools(fsbench):
    """Files for the guest: fsbench, fio and GNU's GNU_TOOLS (as
    /usr/bin/gnu-NAME), with the shared libraries they need."""
    tools = {"usr/bin/fio": "fio", **{f"usr/bin/gnu-{t}": t for t in GNU_TOOLS}}
    files = {"bin/fsbench": fsbench}
    for guest_path, name in tools.items():
        path = shutil.which(name)
        if path is None:
            raise RuntimeError(f"{name} is missing: install it (make deps)")
        files[guest_path] = path
        files.update({lib: lib for lib in guest.libs_of(path)})
    return files


# (d)'s source tree: a released source distribution, pinned by its hash, so
# that every machine untars the same files. `full` takes its tests and docs,
# 3,076 files in 758 directories (the whole of it, 6,725 files, took one boot
# at cache=never nearly ten minutes, most of it in ls -lR)
TREE_SDIST = ("django==4.2.16", "Django-4.2.16.tar.gz",
              "6f1616c2786c408ce86ab7e10f792b8f15742f7b7b7460243929cb371e7f1dad")


def tree_tarball(prefixes):
    """The members of the source distribution under prefixes, as an
    uncompressed tarball (the guest's untar then measures the file system,
    not gunzip under TCG); -> (its path, how many files it holds)."""
    requirement, sdist, sha256 = TREE_SDIST
    name = os.path.join(BUILD, re.sub(r"\W", "_", "+".join(prefixes)) + ".tar")
    if not os.path.exists(name):
        os.makedirs(BUILD, exist_ok=True)
        path = os.path.join(BUILD, sdist)
        if not os.path.exists(path):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            "-d", BUILD, requirement], check=True)
        with open(path, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != sha256:
                raise RuntimeError(f"{path}: not the sha256 pinned in TREE_SDIST")
        with tarfile.open(path) as src, tarfile.open(name + ".tmp", "w") as tar:
            for m in src:
                if m.name.startswith(prefixes) and (m.isfile() or m.isdir()):
                    tar.addfile(m, src.extractfile(m) if m.isfile() else None)
        os.rename(name + ".tmp", name)
    with tarfile.open(name) as tar:
        files = sum(1 for m in tar if m.isfile())
    return name, files


def session_stats(sid):
    """(pid, the fields of /proc/pid/stat after the command name) of every
    live process in session sid."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:               # field 6 of stat: session id
            yield pid, fields


def session_cpu(sid):
    """user+sys seconds of every live process in session sid."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum((int(fields[11]) + int(fields[12])) / tick for _, fields in session_stats(sid))


DAEMONS = {"ours": ("ours", 1), "reference": ("reference", 1), "ours_2q": ("ours", 2)}   # who -> daemon, queues


def control_daemons(daemon):
    """An A/A run: the slots of ours and the reference both run `daemon`,
    on the first and the second device. Its ratios show how far from 1 a
    ratio strays when nothing differs, and whether a device's place in the
    guest moves it (the reference cannot serve two queues: that slot stays ours)."""
    return {**DAEMONS, "ours": (daemon, 1), "reference": (daemon, 1)}


TAGS = {"ours": guest.TAG, "reference": "ref", "ours_2q": "ours2q"}


class Markers:
    """Watches the console for the markers "BENCH-MARK who:round:phase[-end]";
    at each samples that daemon's CPU and, for ours, its request count."""

    def __init__(self, daemons=DAEMONS):
        self.daemons = daemons
        self.buf, self.samples = "", {}     # (who, round, phase) -> (cpu, requests or None)
        self.reports = {}                   # tag -> count lines seen in its log

    def __call__(self, text, daemons):
        self.buf += text
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            m = re.match(r"BENCH-MARK (\w+):(\d+):(\S+)", line.strip())
            if m:
                who, rnd, phase = m.group(1), int(m.group(2)), m.group(3)
                pid, log_path = daemons[TAGS[who]]
                cpu = session_cpu(pid)
                count = self._ask_count(TAGS[who], pid, log_path) if self.daemons[who][0] == "ours" else None
                self.samples[who, rnd, phase] = (cpu, count)

    def _ask_count(self, tag, pid, log_path):
        """SIGUSR1 makes our daemon log its request count. Signals do not
        queue, so wait for this one's line before the next marker."""
        want = self.reports[tag] = self.reports.get(tag, 0) + 1
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open(log_path) as f:
                counts = re.findall(r"requests served: (\d+)", f.read())
            if len(counts) >= want:
                return int(counts[want - 1])
            time.sleep(0.005)
        raise RuntimeError("the daemon did not report its request count")


def parse_timings(console):
    out = {}
    for name, secs, ops in re.findall(r"^(\w+) ([\d.e-]+) (\d+)\r?$", console, re.M):
        out[name] = {"seconds": float(secs), "ops": int(ops)}
    return out


def timings_by_run(console):
    """The timing lines between each run's two markers: {(who, round): timings}."""
    out, current = {}, None
    for line in console.replace("\r", "").split("\n"):
        m = re.match(r"BENCH-MARK (\w+):(\d+):(\S+)$", line.strip())
        if m:
            current = None if m.group(3).endswith("-end") else (m.group(1), int(m.group(2)))
        elif current is not None:
            out.setdefault(current, {}).update(parse_timings(line))
    return out


def guest_runs(cache, sizes, tree, fsbench, repeat, phases=GROUPS, daemons=DAEMONS):
    """One boot: every phase on each daemon in turn, `repeat` rounds;
    -> {who: [a run per round: {"timings", "groups"}]}."""
    base = tempfile.mkdtemp(prefix="pyvfs-bench-")
    os.sync()           # the previous boot's dirty pages must not be written back during this one
    try:
        shares = {}
        for who in daemons:
            shares[who] = share = os.path.join(base, who)
            os.mkdir(share, 0o755)
            shutil.copy(tree, os.path.join(share, "tree.tar"))
        more = [guest.Device(TAGS[who], shares[who], daemon, cache, queues)
                for who, (daemon, queues) in daemons.items() if who != "ours"]
        markers = Markers(daemons)
        script = SCRIPT.format(repeat=repeat, phases=" ".join(phases), **sizes)
        r = guest.boot(shares["ours"], script, daemon=daemons["ours"][0], cache=cache, timeout=4 * 3600,
                       on_console=markers, extra_files=guest_tools(fsbench), mem_mb=1024, more_devices=more)
        if r.rc != 0 or "BENCH-FAIL" in r.console:
            logs = "\n".join(f"--- {t} ---\n{log[-1500:]}" for t, log in r.daemon_logs.items())
            raise RuntimeError(f"cache={cache}: guest failed (rc={r.rc})\n{r.console[-3000:]}\n{logs}")
        timings = timings_by_run(r.console)
        out = {}
        for who in daemons:
            runs = out[who] = []
            for rnd in range(1, repeat + 1):
                groups = {}
                for g in phases:
                    start, end = markers.samples.get((who, rnd, g)), markers.samples.get((who, rnd, g + "-end"))
                    if start and end:
                        req = end[1] - start[1] if start[1] is not None else None
                        groups[g] = {"cpu": end[0] - start[0], "requests": req}
                if groups:
                    runs.append({"timings": timings.get((who, rnd), {}), "groups": groups})
        out["boot_seconds"] = r.seconds
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def host_fuse_run(sizes, fsbench, tree):
    """The same workloads on the host: its own file system vs our --mount."""
    out = {}
    for side in ("kernel", "ours"):
        base = tempfile.mkdtemp(prefix="pyvfs-hostbench-")
        mnt, proc = base, None
        if side == "ours":
            backing, mnt = os.path.join(base, "backing"), os.path.join(base, "mnt")
            os.mkdir(backing)
            os.mkdir(mnt)
            proc = subprocess.Popen([guest.python(), "-m", "pyvirtiofsd", "--mount", mnt, "--shared-dir", backing,
                                     "--cache", "auto", "--thread-pool-size", "2"], stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            deadline = time.monotonic() + 20
            while not os.path.ismount(mnt):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("pyvirtiofsd --mount did not come up")
                time.sleep(0.05)
        try:
            res, cpu0 = {}, session_cpu(proc.pid) if proc else 0.0
            cmds = [["meta", mnt + "/meta", str(sizes["files"])],
                    ["seqwrite", mnt + "/seq.bin", str(sizes["seq_mib"])], ["seqread", mnt + "/seq.bin"],
                    ["meta-par", mnt + "/par", str(sizes["par_files"]), "4"]]
            for c in cmds:
                text = subprocess.run([fsbench, *c], capture_output=True, text=True, check=True).stdout
                res.update(parse_timings(text))
            t0 = time.monotonic()
            os.mkdir(mnt + "/tree")
            subprocess.run(["tar", "-xf", tree, "-C", mnt + "/tree"], check=True)
            res["tree_untar"] = {"seconds": time.monotonic() - t0, "ops": 0}
            t0 = time.monotonic()
            shutil.rmtree(mnt + "/tree")
            res["tree_rm"] = {"seconds": time.monotonic() - t0, "ops": 0}
            if proc:
                res["_cpu"] = session_cpu(proc.pid) - cpu0
            out[side] = res
        finally:
            if proc:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            shutil.rmtree(base, ignore_errors=True)
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x):
    return "—" if x is None else f"{x:.2f}"


def best_of(runs):
    """Per workload the run with the least time per operation; per phase the least CPU."""
    timings = {}
    for r in runs:
        for name, t in r["timings"].items():
            if name not in timings or per_op_seconds(t) < per_op_seconds(timings[name]):
                timings[name] = t
    groups = {}
    for r in runs:
        for g, v in r["groups"].items():
            if g not in groups or v["cpu"] / (v["requests"] or 1) < groups[g]["cpu"] / (groups[g]["requests"] or 1):
                groups[g] = v
    return {"timings": timings, "groups": groups}


def per_op_seconds(t):
    """Time per operation (the fixed-time fio run differs in operations, not seconds)."""
    return t["seconds"] / t["ops"] if t["ops"] else t["seconds"]


def cpu_per_request(ours, ref, g):
    """(ours, reference) CPU µs per request in phase g; the reference is taken
    to serve our count, scaled by its operations where a fixed-time workload
    lets them differ (fio). None where a phase is missing."""
    go, gr = ours.get("groups", {}).get(g), ref.get("groups", {}).get(g)
    if not go or not go["requests"]:
        return None, None
    n = go["requests"]
    scale = _ops_ratio(ref, ours, FIO_RUNS[g]) if g in FIO_RUNS else 1.0
    return go["cpu"] / n * 1e6, (gr["cpu"] / (n * scale) * 1e6 if gr else None)


def paired(runs, ratio_of, ours="ours"):
    """The machine drifts by tens of per cent over minutes, and a best-of
    can pair one daemon's lucky minute with the other's unlucky one. The
    two runs of a phase in one round are seconds apart: their ratios, as
    "median (each round)", or "—"."""
    rs = [x for x in (ratio_of(o, r) for o, r in _pairs(runs, ours)) if x is not None]
    if not rs:
        return "—"
    return f"{statistics.median(rs):.2f} ({', '.join(f'{x:.2f}' for x in rs)})"


def _pairs(runs, ours="ours"):
    """(ours' run, the reference's run) of each round."""
    return list(zip(runs.get(ours + "_runs", []), runs.get("reference_runs", [])))


def _wall_ratio(name):
    def of(o, r):
        to, tr = o["timings"].get(name), r["timings"].get(name)
        return ratio(per_op_seconds(to), per_op_seconds(tr)) if to and tr else None
    return of


def _cpu_ratio(g):
    return lambda o, r: ratio(*cpu_per_request(o, r, g))


def _ops_ratio(a, b, name):
    """Operations a did over those b did in workload name (1 when unknown)."""
    ta, tb = a.get("timings", {}).get(name), b.get("timings", {}).get(name)
    return ta["ops"] / tb["ops"] if ta and tb and ta["ops"] and tb["ops"] else 1.0


def markdown(data):
    lines = [f"# Benchmark {data['stamp']}", "",
             f"Guest: {data['kernel']}, QEMU accel {data['accel']}, sizes `{data['size']}`. "
             "Ratios are ours / reference of the time per operation (below 1: we are faster). "
             "Both daemons serve one guest (a boot per cache mode), each its own copy of the data; "
             "every phase runs on each in turn, in rounds of alternating order. "
             "Best of: each daemon's best run per workload. Paired: the ratio within each round "
             "(the two runs of a phase, seconds apart), median and each round.", ""]
    if data.get("control"):
        lines += [f"**A control run**: both columns are the daemon `{data['control']}`, \"ours\" on the guest's "
                  "first device and \"reference\" on its second; a ratio of 1 is what nothing differing looks like.", ""]
    for cache, runs in data["guest"].items():
        ours, ref = runs["ours"], runs["reference"]
        lines += [f"## cache={cache}", "",
                  "| workload | ours s | reference s | ops ours / ref | ratio, best of | paired |",
                  "|---|---|---|---|---|---|"]
        for name in sorted(set(ours["timings"]) & set(ref["timings"]) - {PACED}):
            (a, ao), (b, bo) = [(t[name]["seconds"], t[name]["ops"]) for t in (ours["timings"], ref["timings"])]
            r = ratio(per_op_seconds(ours["timings"][name]), per_op_seconds(ref["timings"][name]))
            lines.append(f"| {name} | {a:.3f} | {b:.3f} | {ao} / {bo} | {fmt(r)} | {paired(runs, _wall_ratio(name))} |")
        # ours with two request queues against the reference with its one
        ours2 = runs.get("ours_2q", {})
        for name, a in sorted(ours2.get("timings", {}).items()):
            b = ref["timings"].get(name, {}).get("seconds")
            lines.append(f"| {name}, ours with 2 request queues | {a['seconds']:.3f} | "
                         f"{'—' if b is None else f'{b:.3f}'} | | {fmt(ratio(a['seconds'], b))} | "
                         f"{paired(runs, _wall_ratio(name), 'ours_2q')} |")
        lines += ["", "| phase | requests (ours) | ours CPU µs/req | reference CPU µs/req (est.) | ratio, best of | paired |",
                  "|---|---|---|---|---|---|"]
        phases = [(g, g, ours, ref) for g in GROUPS] + [("par", "par, ours with 2 request queues", ours2, ref)]
        for g, label, o, r in phases:
            a, b = cpu_per_request(o, r, g)
            if a is None:
                continue
            pair = paired(runs, _cpu_ratio(g), "ours" if o is ours else "ours_2q")
            lines.append(f"| {label} | {o['groups'][g]['requests']} | {a:.1f} | {fmt(b)} | {fmt(ratio(a, b))} | {pair} |")
        lines.append("")
    lines += targets(data["guest"])
    if data.get("host"):
        k, o = data["host"]["kernel"], data["host"]["ours"]
        lines += ["## /dev/fuse on the host: ours / the host kernel's own file system", "",
                  "| workload | kernel s | ours s | ratio |", "|---|---|---|---|"]
        for name in sorted(set(k) & set(o)):
            if not name.startswith("_"):
                lines.append(f"| {name} | {k[name]['seconds']:.3f} | {o[name]['seconds']:.3f} | "
                             f"{fmt(ratio(o[name]['seconds'], k[name]['seconds']))} |")
        lines.append("")
    return "\n".join(lines)


# issue #5's targets: (label, the ratios that count, the most a ratio may be)
TARGETS = [("metadata and tree wall time", lambda n: n.startswith(("meta_", "tree_")), 1.3),
           ("sequential read time", lambda n: n == "seq_read", 1 / 0.9),
           ("sequential write time", lambda n: n == "seq_write", 1 / 0.9)]


def geomean(xs):
    return math.exp(statistics.mean(map(math.log, xs))) if xs else None


def targets(guest_runs_by_cache):
    """Per target and cache mode the geometric mean of the paired ratios
    over every round (and every row of the target): one row's three rounds
    stray by tens of per cent even when both sides run the same daemon
    (`--control`), a mean over more pairs less."""
    caches = list(guest_runs_by_cache)
    lines = ["## Against the targets of issue #5", "",
             "Geometric mean of the paired ratios, over every round and every row of the target "
             "(a row's ratio is the time per operation, ours / reference).", "",
             "| target | most | " + " | ".join(caches) + " |", "|---|---|" + "---|" * len(caches)]

    def row(label, most, per_cache):
        cells = [("—" if g is None else f"{g:.2f}" + ("" if g <= most else " ✗")) for g in per_cache]
        lines.append(f"| {label} | {most:.2f} | " + " | ".join(cells) + " |")

    for label, counts, most in TARGETS:
        per_cache = []
        for cache in caches:
            xs = [_wall_ratio(n)(o, r) for o, r in _pairs(guest_runs_by_cache[cache]) for n in o["timings"] if counts(n)]
            per_cache.append(geomean([x for x in xs if x]))
        row(label, most, per_cache)
    for g in GROUPS:
        per_cache = [geomean([x for x in (_cpu_ratio(g)(o, r) for o, r in _pairs(guest_runs_by_cache[c])) if x])
                     for c in caches]
        if any(x is not None for x in per_cache):
            row(f"CPU per request, {g}", 3.0, per_cache)
    return lines + [""]


def save(out, stamp, data):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stamp}.json"), "w") as f:
        json.dump(data, f, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="full")
    ap.add_argument("--cache", action="append", choices=["never", "auto", "always"])
    ap.add_argument("--no-host", action="store_true", help="skip the /dev/fuse host comparison")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--repeat", type=int, default=4,
                    help="rounds per cache mode, each phase on each daemon per round; even, so that each "
                         "daemon runs first in half of them (the first of a pair pays for it)")
    ap.add_argument("--phase", action="append", choices=GROUPS, help="only these phases (default: all)")
    ap.add_argument("--control", choices=["ours", "reference"],
                    help="an A/A run: this daemon on both sides (the noise, and the devices' places in the guest)")
    args = ap.parse_args(argv)
    if args.repeat % 2:
        print(f"bench: --repeat {args.repeat} is odd: ours runs first in one round more than the reference",
              file=sys.stderr)
    phases = [g for g in GROUPS if g in (args.phase or GROUPS)]
    sizes = SIZES[args.size]
    fsbench = fsbench_binary()
    tree, nfiles = tree_tarball(sizes["tree"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = {"stamp": stamp, "size": args.size, "sizes": sizes, "tree_files": nfiles,
            "kernel": guest.kernel()[1], "accel": os.environ.get("QEMU_ACCEL", "tcg"), "guest": {},
            "control": args.control}
    daemons = control_daemons(args.control) if args.control else DAEMONS
    for cache in args.cache or ["never", "auto", "always"]:
        print(f"bench: cache={cache}, {args.repeat} rounds of {' '.join(phases)} ...", flush=True)
        got = guest_runs(cache, sizes, tree, fsbench, args.repeat, phases, daemons)
        runs = data["guest"][cache] = {"boot_seconds": got.pop("boot_seconds")}
        for who, its_runs in got.items():
            runs[who + "_runs"] = its_runs
            runs[who] = best_of(its_runs)
        save(args.out, stamp, data)         # partial results survive a later failure
    if not args.no_host:
        print("bench: /dev/fuse on the host ...", flush=True)
        data["host"] = host_fuse_run(sizes, fsbench, tree)
    save(args.out, stamp, data)
    md = markdown(data)
    with open(os.path.join(args.out, f"{stamp}.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
