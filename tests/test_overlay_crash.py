"""SIGKILL the daemon in the middle of copy-ups of large files, restart it:
the upper layer holds either no copy or a whole one (copy-up is staged in
the work directory and renamed into place), and the restarted daemon
clears the work directory and serves the right data."""
import hashlib
import os
import shutil
import signal
import tempfile
import threading

import pytest

import fusemount

fusemount.require_fuse()
SIZE = 48 << 20
FILES = [f"big{i}" for i in range(3)]


def _content(i):
    block = hashlib.sha256(str(i).encode()).digest() * 2048       # 64 KiB
    return block * (SIZE // len(block))


@pytest.fixture
def layers():
    base = tempfile.mkdtemp(prefix="pyvfs-ovl-crash-")
    lower, upper, work = (os.path.join(base, n) for n in ("L", "U", "W"))
    for d in (lower, upper):
        os.mkdir(d)
    for i, name in enumerate(FILES):
        with open(os.path.join(lower, name), "wb") as f:
            f.write(_content(i))
    try:
        yield lower, upper, work
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _append_all(mnt):
    for name in FILES:
        try:
            with open(os.path.join(mnt, name), "ab") as f:
                f.write(b"appended")
        except OSError:
            return          # the daemon is gone


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim", [0, 1])
def test_sigkill_during_copy_up_leaves_a_consistent_upper(layers, victim):
    lower, upper, work = layers
    args = ("--lower", lower, "--overlay-workdir", work, "--cache", "never")
    with fusemount.mounted_subprocess(upper, None, *args) as (mnt, proc):
        writer = threading.Thread(target=_append_all, args=(mnt,), daemon=True)
        writer.start()
        staged = os.path.join(work, "work")
        # wait until the victim's copy is being staged, then kill
        fusemount.wait_until(lambda: len(os.listdir(upper)) >= victim and os.listdir(staged), 30,
                             "a copy-up in the work directory")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fusemount.force_unmount(mnt)
        writer.join(30)
    for i, name in enumerate(FILES):
        path = os.path.join(upper, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            assert data in (_content(i), _content(i) + b"appended"), f"{name}: a partial copy is visible"
    with fusemount.mounted_subprocess(upper, None, *args) as (mnt, proc):
        assert os.listdir(os.path.join(work, "work")) == []        # leftovers cleared at start
        for i, name in enumerate(FILES):
            with open(os.path.join(mnt, name), "rb") as f:
                assert f.read() in (_content(i), _content(i) + b"appended")
        _append_all(mnt)
        with open(os.path.join(mnt, FILES[-1]), "rb") as f:
            assert f.read().startswith(_content(len(FILES) - 1))
