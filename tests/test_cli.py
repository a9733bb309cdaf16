"""The command line: virtiofsd-compatible options, one-line errors, exit 2."""
import json
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "pyvirtiofsd", *args], capture_output=True, text=True, timeout=60)


def test_print_capabilities_is_the_json_libvirt_reads():
    p = run("--print-capabilities")
    assert p.returncode == 0
    caps = json.loads(p.stdout)
    assert caps["type"] == "fs" and "separate-options" in caps["features"]


@pytest.mark.parametrize("args, words", [
    (["--bogus"], "unrecognized"),
    (["--socket-path", "/tmp/x"], "--shared-dir is required"),
    (["--shared-dir", "/nonexistent-dir", "--socket-path", "/tmp/x"], "not a directory"),
    (["--shared-dir", "/tmp"], "exactly one of"),
    (["--shared-dir", "/tmp", "--socket-path", "/tmp/s", "--fd", "3"], "exactly one of"),
    (["--shared-dir", "/tmp", "--socket-path", "/tmp/s", "--cache", "sometimes"], "invalid choice"),
    (["--shared-dir", "/tmp", "--socket-path", "/tmp/s", "--thread-pool-size", "x"], "invalid int"),
    (["--shared-dir", "/tmp", "--socket-path", "/tmp/s", "--log-level", "loud"], "invalid choice"),
])
def test_argument_errors_give_one_line_and_exit_2(args, words):
    p = run(*args)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("pyvirtiofsd: ")


def test_help_lists_the_virtiofsd_options():
    out = run("--help").stdout
    for opt in ("--socket-path", "--shared-dir", "--tag", "--cache", "--thread-pool-size",
                "--log-level", "--fd", "--print-capabilities", "--mount"):
        assert opt in out


@pytest.mark.parametrize("flag, want", [([], None), (["--readdirplus"], True), (["--no-readdirplus"], False)])
def test_readdirplus_flags(flag, want):
    """None leaves it to the cache mode (see test_server)."""
    from pyvirtiofsd.cli import parse_args
    assert parse_args(["--shared-dir", "/tmp", "--socket-path", "/tmp/s", *flag]).readdirplus is want
