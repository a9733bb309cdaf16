"""A real guest kernel on an overlay share (--lower twice): lookups through
whiteouts and opaque directories, merged listings, copy-up on write and on
chmod, removal leaving whiteouts, opaque mkdir, EXDEV for a merged directory
rename. Then on the host: the raw upper holds what kernel overlayfs would
write, and a kernel overlay mount of the same layers shows the tree the
guest saw."""
import os
import stat
import sys

import pytest

import guest

sys.path.insert(0, os.path.join(guest.REPO, "tests"))
from test_overlay_trees import make_lowers                       # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="booting guests on vhost-user needs root here")

SCRIPT = r"""
eq merged_root "big d e f g o t x" "$(ls | tr '\n' ' ' | sed 's/ $//')"
eq merged_dir "e f k" "$(ls d | tr '\n' ' ' | sed 's/ $//')"
err whiteout_hides ENOENT open_write d/h
eq opaque_dir "shown" "$(ls o)"
eq file_over_dir "a file over a dir" "$(cat t)"
eq lower_data deep "$(cat d/e/f)"
echo -n more >> f
eq copy_up_append 804 "$(stat -c %s f)"
chmod 600 x
eq copy_up_chmod 600 "$(stat -c %a x)"
eq xattr_kept 1 "$(getfattr --only-values -n user.a x)"
rm d/k
eq unlink_lower "e f" "$(ls d | tr '\n' ' ' | sed 's/ $//')"
rm -r o
mkdir o
eq opaque_mkdir "" "$(ls o)"
err merged_dir_rename EXDEV rename d d2
echo new > e/new
eq new_file new "$(cat e/new)"
eq listing_after "big d e f g o t x" "$(ls | tr '\n' ' ' | sed 's/ $//')"
"""


def test_overlay_in_a_guest(tmp_path):
    base = str(tmp_path)
    os.chmod(base, 0o755)
    lowers = make_lowers(base)
    upper, work = os.path.join(base, "U"), os.path.join(base, "W")
    os.mkdir(upper)
    args = ("--lower", lowers[0], "--lower", lowers[1], "--overlay-workdir", work)
    r = guest.boot(upper, SCRIPT, daemon_args=args, timeout=300)
    assert r.rc == 0, r.console[-3000:] + r.daemon_log[-3000:]
    assert not r.failures(), r.failures()
    assert len(r.results) == 14
    # the raw upper: whiteouts, an opaque directory, copied-up files
    wh = os.lstat(os.path.join(upper, "d", "k"))
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(os.path.join(upper, "o"), "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.lstat(os.path.join(upper, "x")).st_mode) == 0o600
    assert os.getxattr(os.path.join(upper, "x"), "user.a") == b"1"
    # and kernel overlayfs sees the same tree
    from pyvirtiofsd import syscalls
    kmnt = os.path.join(base, "K")
    os.mkdir(kmnt)
    syscalls.mount("overlay", kmnt, "overlay", 0,
                   f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},index=off")
    try:
        assert sorted(os.listdir(kmnt)) == ["big", "d", "e", "f", "g", "o", "t", "x"]
        assert sorted(os.listdir(os.path.join(kmnt, "d"))) == ["e", "f"]
        assert os.listdir(os.path.join(kmnt, "o")) == []
        with open(os.path.join(kmnt, "e", "new")) as f:
            assert f.read() == "new\n"
    finally:
        syscalls.umount2(kmnt, syscalls.MNT_DETACH)
