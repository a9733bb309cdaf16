"""A real guest kernel uses the share: every operation a shell user does,
checked in the guest (results, exact errnos through fsop) and on the host
afterwards (contents by checksum, modes, owners, link counts, symlink
targets, xattrs, times)."""
import hashlib
import os
import stat

import pytest

import guest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="booting guests on vhost-user needs root here")

OPS_SCRIPT = r"""
# -- reading what the host put there
eq host_file "from the host" "$(cat hostfile)"
eq host_dir_listing "a b c" "$(ls hostdir | tr '\n' ' ' | sed 's/ $//')"
eq host_symlink_target "/etc/hostname" "$(readlink host_escape)"
err host_symlink_resolves_in_guest ENOENT open_write host_escape

# -- files
echo -n hello > f1
eq write_read hello "$(cat f1)"
echo -n " world" >> f1
eq append "hello world" "$(cat f1)"
truncate -s 5 f1
eq truncate hello "$(cat f1)"
truncate -s 100000 sparse
eq truncate_grow 100000 "$(stat -c %s sparse)"
dd if=/dev/urandom of=big bs=1M count=6 2>/dev/null
md5sum big | cut -d' ' -f1 > big.md5
eq big_size 6291456 "$(stat -c %s big)"
eq big_reread "$(cat big.md5)" "$(md5sum big | cut -d' ' -f1)"
dd if=big of=big.copy bs=64k 2>/dev/null
eq copy "$(cat big.md5)" "$(md5sum big.copy | cut -d' ' -f1)"
err creat_excl EEXIST creat_excl f1
err open_missing ENOENT open_write nope
err open_dir_on_file ENOTDIR open_dir f1
err write_open_dir EISDIR open_write hostdir
eq tmpfile OK "$(fsop tmpfile . tmplinked)"
eq tmpfile_content tmp "$(cat tmplinked)"

# -- directories
mkdir d1
mkdir -p d1/sub/deep
echo deep > d1/sub/deep/f
eq mkdir_p deep "$(cat d1/sub/deep/f)"
err mkdir_exists EEXIST mkdir d1
err rmdir_notempty ENOTEMPTY rmdir d1
err unlink_dir EISDIR unlink d1
err rmdir_file ENOTDIR rmdir f1
err through_file ENOTDIR mkdir f1/x
err rmdir_missing ENOENT rmdir nothing
mkdir gone && rmdir gone
err rmdir_done ENOENT rmdir gone
eq dir_nlink 3 "$(stat -c %h d1)"

# -- rename
echo a > ra; echo b > rb
t rename_over mv ra rb
eq rename_over_content a "$(cat rb)"
err rename_source_gone ENOENT rename ra rc
err noreplace EEXIST noreplace rb f1
eq noreplace_ok OK "$(fsop noreplace rb rc)"
echo 1 > x1; echo 2 > x2
eq exchange OK "$(fsop exchange x1 x2)"
eq exchanged "2 1" "$(cat x1) $(cat x2)"
err exchange_missing ENOENT exchange x1 nonexistent
t rename_dir_across mv d1/sub d2
eq moved_tree deep "$(cat d2/deep/f)"
err dir_over_file ENOTDIR rename d2 f1
err file_over_dir EISDIR rename f1 d2
mkdir e1 e2; echo z > e1/z
err dir_over_nonempty ENOTEMPTY rename e2 e1
eq dir_over_empty OK "$(fsop rename e1 e2)"
err dir_into_itself EINVAL rename d2 d2/deep/inside

# -- hard links
ln f1 f1link
eq link_count 2 "$(stat -c %h f1)"
eq link_same_inode "$(stat -c %i f1)" "$(stat -c %i f1link)"
ln f1 f1link2 && rm f1link2
eq link_count_after_rm 2 "$(stat -c %h f1link)"
err link_dir EPERM link d2 d2link
err link_exists EEXIST link f1 f1link

# -- symlinks
ln -s f1 s_rel
eq readlink_rel f1 "$(readlink s_rel)"
eq through_symlink hello "$(cat s_rel)"
ln -s /etc/passwd s_abs
eq readlink_abs /etc/passwd "$(readlink s_abs)"
eq abs_resolves_in_guest "root:x:0:0::/:/bin/sh" "$(head -1 s_abs)"
ln -s nowhere dangling
t dangling_is_link test -L dangling
err dangling_open ENOENT open_write dangling
err nofollow ELOOP open_nofollow s_rel

# -- modes, owners, times
chmod 640 f1
eq chmod 640 "$(stat -c %a f1)"
chmod 4755 big.copy
eq setuid 4755 "$(stat -c %a big.copy)"
chown 1000:1000 f1
eq chown 1000:1000 "$(stat -c %u:%g f1)"
chown 1000:1000 big.copy
eq chown_clears_setuid 755 "$(stat -c %a big.copy)"
touch -d "2001-02-03 04:05:06" f1
eq utimes 981173106 "$(stat -c %Y f1)"
mkdir pub; chmod 1777 pub
eq user_creates OK "$(fsop as 1000 1000 creat_excl pub/userfile)"
eq user_creates_as_user 1000:1000 "$(stat -c %u:%g pub/userfile)"
eq user_denied EACCES "$(fsop as 1000 1000 open_write big)"
eq sticky_protects EPERM "$(fsop as 2000 2000 unlink pub/userfile)"

# -- special files
mkfifo fifo
eq fifo "fifo" "$(stat -c %F fifo)"
mknod dev c 1 3 2>/dev/null
t device_refused test ! -e dev

# -- xattrs
setfattr -n user.color -v blue f1
eq getxattr blue "$(getfattr --only-values -n user.color f1)"
setfattr -n user.other -v 1 f1
eq listxattr "user.color user.other" "$(getfattr -d f1 | grep user | cut -d= -f1 | sort | tr '\n' ' ' | sed 's/ $//')"
setfattr -x user.other f1
err removed_xattr ENODATA getxattr f1 user.other
err missing_xattr ENODATA getxattr f1 user.none

# -- listing, usage, statfs
eq find_tree 3 "$(find d2 | wc -l)"
t ls_lR ls -lR .
t du du -s .
t df df /mnt
eq statfs_nonzero yes "$(df /mnt | awk 'NR==2 { print ($2 > 0) ? "yes" : "no" }')"

# -- several writers at once
for i in 1 2 3 4; do (dd if=/dev/zero bs=64k count=16 2>/dev/null | tr '\0' "$i" > par$i) & done; wait
for i in 1 2 3 4; do eq parallel_$i 1048576 "$(stat -c %s par$i)"; done
eq parallel_content 1048576 "$(tr -d 3 < par3 | wc -c | xargs expr 1048576 -)"
sync
"""


def prepare_share(share):
    os.makedirs(share, exist_ok=True)
    os.chmod(share, 0o755)          # other guest users must reach /mnt
    with open(os.path.join(share, "hostfile"), "w") as f:
        f.write("from the host")
    os.mkdir(os.path.join(share, "hostdir"))
    for n in "abc":
        open(os.path.join(share, "hostdir", n), "w").close()
    os.symlink("/etc/hostname", os.path.join(share, "host_escape"))


def assert_all_passed(r):
    assert r.rc == 0, f"guest script rc={r.rc}\n{r.console[-3000:]}\n--- daemon ---\n{r.daemon_log[-3000:]}"
    assert r.results, "the guest reported nothing"
    assert not r.failures(), f"failed in the guest: {r.failures()}\n--- daemon ---\n{r.daemon_log[-2000:]}"
    assert r.daemon_rc == 0, f"the daemon exited with {r.daemon_rc}\n{r.daemon_log[-2000:]}"


@pytest.fixture(scope="module")
def host_run(tmp_path_factory):
    share = str(tmp_path_factory.mktemp("share"))
    prepare_share(share)
    return share, guest.boot(share, OPS_SCRIPT, timeout=300)


def test_guest_operations_pass_in_the_guest(host_run):
    share, r = host_run
    assert_all_passed(r)
    assert len(r.results) >= 75


def test_guest_changes_are_on_the_host(host_run):
    share, r = host_run
    assert_all_passed(r)
    p = lambda *n: os.path.join(share, *n)
    big = open(p("big"), "rb").read()
    assert hashlib.md5(big).hexdigest() == open(p("big.md5")).read().strip()
    assert open(p("big.copy"), "rb").read() == big
    st = os.lstat(p("f1"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink) == (0o640, 1000, 1000, 2)
    assert st.st_mtime == 981173106 and open(p("f1")).read() == "hello"
    assert os.lstat(p("f1link")).st_ino == st.st_ino
    assert os.getxattr(p("f1"), "user.color") == b"blue" and "user.other" not in os.listxattr(p("f1"))
    assert os.readlink(p("s_rel")) == "f1" and os.readlink(p("s_abs")) == "/etc/passwd"
    assert os.readlink(p("dangling")) == "nowhere"
    assert stat.S_ISFIFO(os.lstat(p("fifo")).st_mode) and not os.path.lexists(p("dev"))
    assert os.lstat(p("pub", "userfile")).st_uid == 1000
    assert stat.S_IMODE(os.lstat(p("big.copy")).st_mode) == 0o755
    assert open(p("x1")).read() == "2\n" and open(p("x2")).read() == "1\n"
    assert open(p("d2", "deep", "f")).read() == "deep\n" and not os.path.exists(p("d1", "sub"))
    assert os.path.getsize(p("sparse")) == 100000 and open(p("tmplinked")).read() == "tmp"
    for i in range(1, 5):
        assert open(p(f"par{i}"), "rb").read() == str(i).encode() * 1048576
    assert not os.path.exists(p("gone")) and sorted(os.listdir(p("e2"))) == ["z"]


def test_two_request_queues_and_parallel_writers(tmp_path):
    script = r"""
for i in 1 2 3 4 5 6; do (dd if=/dev/urandom of=w$i bs=256k count=8 2>/dev/null; md5sum w$i > w$i.md5) & done; wait
for i in 1 2 3 4 5 6; do eq sum_$i "$(cut -d' ' -f1 w$i.md5)" "$(md5sum w$i | cut -d' ' -f1)"; done
mkdir many; for i in $(seq 1 200); do echo $i > many/f$i; done
eq many_files 200 "$(ls many | wc -l)"
sync
"""
    r = guest.boot(str(tmp_path), script, num_request_queues=2)
    assert_all_passed(r)
    for i in range(1, 7):
        data = open(tmp_path / f"w{i}", "rb").read()
        assert len(data) == 2 << 20
        assert hashlib.md5(data).hexdigest() == open(tmp_path / f"w{i}.md5").read().split()[0]
    assert len(os.listdir(tmp_path / "many")) == 200


def test_memory_backend_in_the_guest(tmp_path):
    """The same checks on the in-memory backend (prefilled from the share)."""
    if guest.default_daemon() != "ours":
        pytest.skip("the memory backend is ours only")
    prepare_share(str(tmp_path))
    r = guest.boot(str(tmp_path), OPS_SCRIPT, daemon_args=("--backend", "memory"))
    assert_all_passed(r)
    assert sorted(os.listdir(tmp_path)) == ["host_escape", "hostdir", "hostfile"]   # RAM only
