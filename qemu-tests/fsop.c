/* fsop: one file system call from the guest shell, printing OK (and a
 * result) or the errno name, so guest tests compare exact errnos. Built
 * static on the host by guest.py and copied into the guest initramfs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static int done(long rc)
{
	if (rc < 0) {
		printf("%s\n", strerrorname_np(errno));
		return 1;
	}
	printf("OK\n");
	return 0;
}

int main(int argc, char **argv)
{
	/* fsop as UID GID OP ARGS...: run the call as another user */
	if (argc > 4 && !strcmp(argv[1], "as")) {
		if (setgroups(0, NULL) || setgid(atoi(argv[3])) || setuid(atoi(argv[2]))) {
			perror("fsop as");
			return 2;
		}
		argv += 3;
		argc -= 3;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: fsop [as UID GID] OP ARGS...\n");
		return 2;
	}
	const char *op = argv[1], *a = argv[2], *b = argc > 3 ? argv[3] : NULL;
	if (!strcmp(op, "mkdir")) return done(mkdir(a, 0755));
	if (!strcmp(op, "rmdir")) return done(rmdir(a));
	if (!strcmp(op, "unlink")) return done(unlink(a));
	if (!strcmp(op, "rename") && b) return done(rename(a, b));
	if (!strcmp(op, "noreplace") && b) return done(renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_NOREPLACE));
	if (!strcmp(op, "exchange") && b) return done(renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE));
	if (!strcmp(op, "link") && b) return done(link(a, b));
	if (!strcmp(op, "symlink") && b) return done(symlink(a, b));
	if (!strcmp(op, "creat_excl")) return done(open(a, O_CREAT | O_EXCL | O_WRONLY, 0644));
	if (!strcmp(op, "open_dir")) return done(open(a, O_RDONLY | O_DIRECTORY));
	if (!strcmp(op, "open_nofollow")) return done(open(a, O_RDONLY | O_NOFOLLOW));
	if (!strcmp(op, "open_write")) return done(open(a, O_WRONLY));
	if (!strcmp(op, "truncate") && b) return done(truncate(a, atol(b)));
	if (!strcmp(op, "getxattr") && b) return done(getxattr(a, b, NULL, 0));
	if (!strcmp(op, "removexattr") && b) return done(removexattr(a, b));
	if (!strcmp(op, "tmpfile")) {
		int fd = open(a, O_TMPFILE | O_RDWR, 0600);
		if (fd < 0 || write(fd, "tmp", 3) != 3) return done(-1);
		char path[64];
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		return done(b ? linkat(AT_FDCWD, path, AT_FDCWD, b, AT_SYMLINK_FOLLOW) : 0);
	}
	fprintf(stderr, "fsop: unknown op %s\n", op);
	return 2;
}
