"""Boot a small Linux guest under QEMU on a virtio-fs share and run a shell
script in it.

The guest is the host's Debian kernel (/boot/vmlinuz-*) with an initramfs
made here: busybox, the virtio and virtiofs modules, getfattr/setfattr and
their libraries, and `fsop` (qemu-tests/fsop.c, built static) for exact
errnos. /init mounts the share at /mnt, runs the script, prints
`GUEST-DONE rc=N` and powers off. Scripts report with `RESULT name PASS` or
`RESULT name FAIL detail` lines (helpers in GUEST_LIB).
"""
import glob
import gzip
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUILD = os.path.join(HERE, ".build")
VENV_PY = os.path.join(REPO, ".venv", "bin", "python")
REFERENCE = "/usr/lib/qemu/virtiofsd"
MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "fuse", "virtiofs"]
TAG = "myfs"

GUEST_LIB = r"""
pass() { echo "RESULT $1 PASS"; }
fail() { echo "RESULT $1 FAIL $2"; }
# t NAME CMD...: the command succeeds
t() { n=$1; shift; if "$@" >/tmp/out 2>&1; then pass $n; else fail $n "$(head -c 300 /tmp/out | tr '\n' ' ')"; fi; }
# eq NAME WANT GOT
eq() { if [ "$2" = "$3" ]; then pass $1; else fail $1 "want [$2] got [$3]"; fi; }
# err NAME ERRNO fsop-args...: the call fails with exactly that errno
err() { n=$1; want=$2; shift 2; eq $n "$want" "$(fsop "$@")"; }
"""

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
for m in {modules}; do [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko; done
. /lib.sh
if mount -t virtiofs {tag} /mnt; then
  echo GUEST-MOUNTED
  cd /mnt && sh -c '. /lib.sh; . /test.sh'
  rc=$?
  cd /
  umount /mnt || rc=99
else
  rc=98
fi
echo "GUEST-DONE rc=$rc"
poweroff -f
"""


def kernel():
    """(vmlinuz path, version) of the newest installed Debian kernel."""
    images = sorted(glob.glob("/boot/vmlinuz-*"))
    if not images:
        raise RuntimeError("no /boot/vmlinuz-*: install linux-image-amd64 (make deps)")
    path = images[-1]
    return path, path.split("vmlinuz-", 1)[1]


class Cpio:
    """A newc cpio archive written in memory."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1
        self.dirs = set()

    def _entry(self, name, mode, data=b"", nlink=1):
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name_b), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * (-(110 + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name):
        if name not in self.dirs:
            self.dirs.add(name)
            self._entry(name, 0o40755, nlink=2)

    def file(self, name, data, mode=0o755):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name, target):
        self._entry(name, 0o120777, target.encode())

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def libs_of(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return sorted(set(re.findall(r"(/\S+\.so[\.\d]*)", out)))


def static_binary(src, build_dir=BUILD):
    """Compile a one-file C helper static (for the guest), once per change."""
    out = os.path.join(build_dir, os.path.splitext(os.path.basename(src))[0])
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        os.makedirs(build_dir, exist_ok=True)
        subprocess.run(["gcc", "-static", "-O2", "-o", out, src], check=True)
    return out


def _fsop():
    return static_binary(os.path.join(HERE, "fsop.c"))


def initramfs(script: str, extra_files=None) -> str:
    """Build (or reuse) the initramfs that runs script; return its path."""
    _, version = kernel()
    init = INIT.format(modules=" ".join(MODULES), tag=TAG)
    fsop = _fsop()
    extra = sorted((extra_files or {}).items())
    key = hashlib.sha256("\0".join([version, init, GUEST_LIB, script, str(os.path.getmtime(fsop))]
                                   + [f"{g}={h}@{os.path.getmtime(h)}" for g, h in extra]).encode()).hexdigest()[:16]
    out = os.path.join(BUILD, f"initrd-{key}.gz")
    if os.path.exists(out):
        return out
    os.makedirs(BUILD, exist_ok=True)
    c = Cpio()
    for d in ("bin", "usr", "usr/bin", "lib", "lib/modules", "lib64", "proc", "sys", "dev", "mnt", "tmp", "etc"):
        c.dir(d)
    c.file("bin/busybox", open(shutil.which("busybox") or "/bin/busybox", "rb").read())
    c.file("bin/fsop", open(fsop, "rb").read())
    for tool in ("/usr/bin/getfattr", "/usr/bin/setfattr"):
        c.file("usr/bin/" + os.path.basename(tool), open(tool, "rb").read())
        for lib in libs_of(tool):
            c.file(lib.lstrip("/"), open(lib, "rb").read(), 0o755)
    for m in MODULES:
        found = glob.glob(f"/lib/modules/{version}/kernel/**/{m}.ko*", recursive=True)
        if not found:
            continue            # built into this kernel
        data = open(found[0], "rb").read()
        if found[0].endswith(".xz"):
            import lzma
            data = lzma.decompress(data)
        elif found[0].endswith(".zst"):
            raise RuntimeError("zstd-compressed modules are not handled")
        c.file(f"lib/modules/{m}.ko", data, 0o644)
    for guest_path, host_path in extra:
        c.file(guest_path.lstrip("/"), open(host_path, "rb").read())
    c.file("init", init.encode())
    c.file("lib.sh", GUEST_LIB.encode(), 0o644)
    c.file("test.sh", script.encode(), 0o644)
    c.file("etc/passwd", b"root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n", 0o644)
    c.file("etc/group", b"root:x:0:\nuser:x:1000:\n", 0o644)
    tmp = out + ".tmp"
    with gzip.open(tmp, "wb", compresslevel=1) as f:
        f.write(c.finish())
    os.rename(tmp, out)
    return out


# -- daemons -----------------------------------------------------------------------------------
def python():
    """The interpreter that runs our daemon: the project's venv, else this one."""
    return VENV_PY if os.path.exists(VENV_PY) else sys.executable


def daemon_command(which, socket_path, share, cache="auto", extra=()):
    if which == "ours":
        return [python(), "-m", "pyvirtiofsd",
                "--socket-path", socket_path, "--shared-dir", share, "--cache", cache, *extra]
    if which == "reference":
        # the C virtiofsd spells "never" as "none"
        return [REFERENCE, f"--socket-path={socket_path}", "-o", f"source={share}",
                "-o", f"cache={'none' if cache == 'never' else cache}",
                "-o", "xattr", *extra]
    raise ValueError(f"unknown daemon {which!r} (ours or reference)")


def default_daemon():
    return os.environ.get("PYVIRTIOFSD_DAEMON", "ours")


@dataclass
class BootResult:
    console: str
    daemon_log: str
    rc: int                      # the guest script's exit status (-1: never finished)
    results: dict = field(default_factory=dict)   # name -> (passed, detail)
    daemon_rc: int = None
    seconds: float = 0.0
    daemon_cpu: float = 0.0      # user+sys seconds of the daemon, all threads
    daemon_logs: dict = field(default_factory=dict)   # tag -> that device's daemon log

    def failures(self):
        return {n: d for n, (ok, d) in self.results.items() if not ok}

    def output_between(self, start, end):
        """Console text between two marker lines the script echoed."""
        m = re.search(re.escape(start) + r"\r?\n(.*?)\r?\n" + re.escape(end), self.console, re.S)
        return m.group(1).replace("\r", "") if m else None


def _cpu_seconds(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


@dataclass
class Device:
    """A virtio-fs device of the guest: the daemon that serves share, and the tag
    the guest mounts it by."""
    tag: str
    share: str
    daemon: str = "ours"
    cache: str = "auto"
    num_request_queues: int = 1
    daemon_args: tuple = ()


def qemu_command(devices, initrd, mem_mb=512):
    """devices: (socket path, tag, request queues) of each vhost-user-fs device."""
    vmlinuz, _ = kernel()
    accel = os.environ.get("QEMU_ACCEL", "tcg")
    cmd = ["qemu-system-x86_64", "-accel", accel, "-m", f"{mem_mb}M", "-smp", "2",
           "-object", f"memory-backend-memfd,id=mem,size={mem_mb}M,share=on", "-numa", "node,memdev=mem"]
    for i, (socket_path, tag, queues) in enumerate(devices):
        more = f",num-request-queues={queues}" if queues > 1 else ""
        cmd += ["-chardev", f"socket,id=char{i},path={socket_path}",
                "-device", f"vhost-user-fs-pci,chardev=char{i},tag={tag}{more}"]
    return cmd + ["-kernel", vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 quiet panic=-1",
                  "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"]


def boot(share, script, *, daemon=None, num_request_queues=1, timeout=300, cache="auto",
         daemon_args=(), on_console=None, extra_files=None, mem_mb=512, more_devices=()) -> BootResult:
    """Serve share with the daemon, boot a guest that runs script, return what
    happened. The guest mounts share at /mnt (tag TAG); more_devices (Device)
    are attached too, each with its own daemon, for the script to mount.
    on_console(text, daemons) sees the console as it comes, with daemons
    {tag: (daemon pid, daemon log path)}; extra_files {guest path: host path}
    go into the initramfs. The result's daemon_log, daemon_rc and daemon_cpu
    are those of the first device's daemon; daemon_logs has each one's log."""
    if shutil.which("qemu-system-x86_64") is None:
        raise RuntimeError("qemu-system-x86_64 is missing: install qemu-system-x86 (make deps)")
    devices = [Device(TAG, share, daemon or default_daemon(), cache, num_request_queues, tuple(daemon_args)),
               *more_devices]
    if len({d.tag for d in devices}) != len(devices):
        raise ValueError("two devices with one tag")
    initrd = initramfs(script, extra_files)
    work = tempfile.mkdtemp(prefix="pyvfs-guest-")
    procs, logs, socks = [], [], []
    q = None
    start = time.monotonic()
    console = []
    try:
        for i, dev in enumerate(devices):
            socks.append(os.path.join(work, f"vfs{i}.sock"))
            logs.append(open(os.path.join(work, f"daemon{i}.log"), "w+"))
            procs.append(subprocess.Popen(daemon_command(dev.daemon, socks[i], dev.share, dev.cache, dev.daemon_args),
                                          stdout=logs[i], stderr=subprocess.STDOUT, start_new_session=True))
        for sock, d in zip(socks, procs):
            _wait_for_socket(sock, d, 30)
        daemons = {dev.tag: (d.pid, log.name) for dev, d, log in zip(devices, procs, logs)}
        q = subprocess.Popen(qemu_command([(s, dev.tag, dev.num_request_queues) for s, dev in zip(socks, devices)],
                                          initrd, mem_mb),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        deadline = start + timeout
        os.set_blocking(q.stdout.fileno(), False)
        while True:
            chunk = q.stdout.read()
            if chunk:
                text = chunk.decode(errors="replace")
                console.append(text)
                if on_console:
                    on_console(text, daemons)
            if q.poll() is not None:
                rest = q.stdout.read()
                if rest:
                    console.append(rest.decode(errors="replace"))
                break
            if time.monotonic() > deadline:
                console.append(f"\n[harness] guest timed out after {timeout}s\n")
                break
            time.sleep(0.05)
        seconds = time.monotonic() - start
        cpu = _cpu_seconds(procs[0].pid)
        try:
            daemon_rc = procs[0].wait(15)          # it exits when QEMU disconnects
        except subprocess.TimeoutExpired:
            daemon_rc = None
    finally:
        for p in (q, *procs):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        daemon_logs = {}
        for dev, log in zip(devices, logs):
            log.seek(0)
            daemon_logs[dev.tag] = log.read()
            log.close()
        shutil.rmtree(work, ignore_errors=True)
    text = "".join(console)
    m = re.search(r"GUEST-DONE rc=(\d+)", text)
    results = {}
    for name, status, detail in re.findall(r"^RESULT (\S+) (PASS|FAIL) ?(.*?)\r?$", text, re.M):
        results[name] = (status == "PASS", detail)
    return BootResult(text, daemon_logs[TAG], int(m.group(1)) if m else -1, results, daemon_rc, seconds, cpu,
                      daemon_logs)


def _wait_for_socket(path, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode} before listening")
        if os.path.exists(path):     # not connected to: the daemon serves one front-end
            return
        time.sleep(0.05)
    raise RuntimeError(f"the daemon did not listen on {path} within {timeout}s")
