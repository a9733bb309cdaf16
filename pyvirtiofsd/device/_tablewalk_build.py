"""cffi builder (API mode) of pyvirtiofsd.device._tablewalk: the indirect
table walk in C and the I/O on the buffers it finds (tablewalk.c). setup.py
builds it at install time; without it (no compiler) the queue walks tables
in Python, as it always can."""
import os

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("""
    long walk_linux_table(const char *table, size_t entries, uint64_t base, uint64_t size, uint64_t *out);
    long io_runs(int fd, uintptr_t base, const uint64_t *runs, size_t count, uint64_t offset, int write);
""")
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tablewalk.c")) as f:
    ffibuilder.set_source("pyvirtiofsd.device._tablewalk", f.read(), extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
