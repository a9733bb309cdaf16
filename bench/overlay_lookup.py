"""Lookup cost in a deep overlay: 1, 4 and 16 host lower layers, names found
in the top layer, in the bottom layer, and absent (the case the per-layer
negative lookup cache is for), with and without that cache. Calls the
OverlayBackend directly (no FUSE) and prints a table of microseconds per
lookup."""
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pyvirtiofsd.vfs.backend import ROOT_CTX                      # noqa: E402
from pyvirtiofsd.vfs.backends.host import HostBackend             # noqa: E402
from pyvirtiofsd.vfs.overlay import OverlayBackend                # noqa: E402

ROUNDS = 2000


def build(base, n):
    lowers = []
    for i in range(n):
        d = os.path.join(base, f"L{i}")
        os.mkdir(d)
        open(os.path.join(d, f"only{i}"), "w").close()
        lowers.append(d)
    upper = os.path.join(base, "U")
    os.mkdir(upper)
    return upper, lowers


def per_lookup_us(ovl, name):
    root = ovl.root()
    start = time.perf_counter()
    for _ in range(ROUNDS):
        try:
            h, _ = ovl.lookup(ROOT_CTX, root, name)
            ovl.forget(h)
        except FileNotFoundError:
            pass
    return (time.perf_counter() - start) / ROUNDS * 1e6


def main():
    rows = []
    for n in (1, 4, 16):
        for cache in (True, False):
            base = tempfile.mkdtemp(prefix="pyvfs-bench-ovl-")
            try:
                upper, lowers = build(base, n)
                ovl = OverlayBackend(HostBackend(upper), [HostBackend(d) for d in lowers],
                                     workdir=os.path.join(base, "W"), negative_cache=cache)
                rows.append((n, "on" if cache else "off", per_lookup_us(ovl, b"only0"),
                             per_lookup_us(ovl, f"only{n - 1}".encode()), per_lookup_us(ovl, b"absent")))
                ovl.destroy()
            finally:
                shutil.rmtree(base, ignore_errors=True)
    print(f"{'lowers':>6} {'negcache':>8} {'top (us)':>10} {'bottom (us)':>12} {'absent (us)':>12}")
    for n, cache, top, bottom, absent in rows:
        print(f"{n:>6} {cache:>8} {top:>10.1f} {bottom:>12.1f} {absent:>12.1f}")


if __name__ == "__main__":
    main()
