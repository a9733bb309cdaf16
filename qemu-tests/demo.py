"""`make demo`: serve a small demo share with pyvirtiofsd, boot a QEMU guest
that mounts it with -t virtiofs, look around, write a file from the guest,
and show that file on the host."""
import os
import shutil
import sys
import tempfile
import textwrap

import guest

SCRIPT = r"""
echo "=== guest: mount -t virtiofs myfs /mnt"
grep virtiofs /proc/mounts
echo "=== guest: ls -l /mnt"
ls -l /mnt
echo "=== guest: df -h /mnt"
df -h /mnt
echo "=== guest: cat /mnt/welcome.txt"
cat /mnt/welcome.txt
echo "=== guest: writing /mnt/from-the-guest.txt"
echo "written by the guest kernel $(uname -r) at $(date -u)" > /mnt/from-the-guest.txt
sha256sum /mnt/data.bin | cut -d' ' -f1 > /mnt/data.bin.sha256
sync
echo "=== guest: done"
"""


def main() -> int:
    if os.geteuid() != 0:
        print("make demo: QEMU with vhost-user shared memory and our daemon need root here", file=sys.stderr)
        return 1
    share = tempfile.mkdtemp(prefix="pyvirtiofsd-demo-")
    try:
        os.chmod(share, 0o755)
        with open(os.path.join(share, "welcome.txt"), "w") as f:
            f.write("Hello from the host! This directory is served by pyvirtiofsd.\n")
        os.mkdir(os.path.join(share, "docs"))
        with open(os.path.join(share, "docs", "README"), "w") as f:
            f.write("a file in a subdirectory\n")
        with open(os.path.join(share, "data.bin"), "wb") as f:
            f.write(os.urandom(4 << 20))
        os.symlink("welcome.txt", os.path.join(share, "hello-link"))
        print(f"host: demo share {share}")
        print("host: starting pyvirtiofsd and booting a guest (QEMU, "
              f"{os.environ.get('QEMU_ACCEL', 'tcg')}); this takes a few seconds ...", flush=True)
        r = guest.boot(share, SCRIPT, daemon="ours", timeout=240)
        shown = r.output_between("=== guest: mount -t virtiofs myfs /mnt", "=== guest: done")
        if r.rc != 0 or shown is None:
            print(r.console[-3000:])
            print("--- daemon log ---\n" + r.daemon_log[-3000:])
            print(f"make demo: the guest did not finish (rc={r.rc})", file=sys.stderr)
            return 1
        print("=== guest: mount -t virtiofs myfs /mnt")
        print(textwrap.indent(shown.strip(), ""))
        written = os.path.join(share, "from-the-guest.txt")
        print("=== host: the file the guest wrote:")
        print(f"{written}: {open(written).read().strip()}")
        import hashlib
        host_sum = hashlib.sha256(open(os.path.join(share, "data.bin"), "rb").read()).hexdigest()
        guest_sum = open(os.path.join(share, "data.bin.sha256")).read().strip()
        print(f"=== host: data.bin sha256 on the host {host_sum[:16]}…, read by the guest {guest_sum[:16]}… "
              f"{'(same)' if host_sum == guest_sum else '(DIFFERENT)'}")
        requests = [l for l in r.daemon_log.splitlines() if "requests served" in l]
        print(f"=== pyvirtiofsd exited with {r.daemon_rc}; {requests[-1].split('INFO ')[-1] if requests else ''}; "
              f"guest ran {r.seconds:.1f}s")
        return 0 if host_sum == guest_sum and r.daemon_rc == 0 else 1
    finally:
        shutil.rmtree(share, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
