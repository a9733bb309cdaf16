/* fsbench: file system workloads timed from inside (guest or host).
 * Prints one line "<workload> <seconds> <operations>" per measured phase.
 *   fsbench meta DIR N          create, stat, rename, unlink N files
 *   fsbench meta-par DIR N P    P processes each doing meta on DIR/pK
 *   fsbench seqwrite FILE MIB   write MIB x 1 MiB, fsync
 *   fsbench seqread FILE        read it back in 1 MiB blocks
 *   fsbench now                 CLOCK_MONOTONIC in nanoseconds
 * Built static on the host by bench/run.py; random I/O is fio's. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void report(const char *name, double t0, long ops)
{
	printf("%s %.6f %ld\n", name, now() - t0, ops);
	fflush(stdout);
}

static void meta(const char *dir, long n, const char *tag)
{
	char a[4096], b[4096], name[64];
	struct stat st;
	double t;
	mkdir(dir, 0755);	/* may exist already */
	t = now();
	for (long i = 0; i < n; i++) {
		snprintf(a, sizeof a, "%s/f%ld", dir, i);
		int fd = open(a, O_CREAT | O_EXCL | O_WRONLY, 0644);
		if (fd < 0)
			die(a);
		close(fd);
	}
	snprintf(name, sizeof name, "%screate", tag);
	report(name, t, n);
	t = now();
	for (long i = 0; i < n; i++) {
		snprintf(a, sizeof a, "%s/f%ld", dir, i);
		if (stat(a, &st))
			die(a);
	}
	snprintf(name, sizeof name, "%sstat", tag);
	report(name, t, n);
	t = now();
	for (long i = 0; i < n; i++) {
		snprintf(a, sizeof a, "%s/f%ld", dir, i);
		snprintf(b, sizeof b, "%s/r%ld", dir, i);
		if (rename(a, b))
			die(b);
	}
	snprintf(name, sizeof name, "%srename", tag);
	report(name, t, n);
	t = now();
	for (long i = 0; i < n; i++) {
		snprintf(b, sizeof b, "%s/r%ld", dir, i);
		if (unlink(b))
			die(b);
	}
	snprintf(name, sizeof name, "%sunlink", tag);
	report(name, t, n);
}

int main(int argc, char **argv)
{
	static char buf[1 << 20];
	if (argc >= 2 && !strcmp(argv[1], "now")) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		printf("%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "meta")) {
		meta(argv[2], atol(argv[3]), "meta_");
		return 0;
	}
	if (argc == 5 && !strcmp(argv[1], "meta-par")) {
		int p = atoi(argv[4]);
		long n = atol(argv[3]);
		double t = now();
		mkdir(argv[2], 0755);
		for (int k = 0; k < p; k++) {
			if (fork() == 0) {
				char dir[4096];
				snprintf(dir, sizeof dir, "%s/p%d", argv[2], k);
				freopen("/dev/null", "w", stdout);
				meta(dir, n, "par_");
				_exit(0);
			}
		}
		int status, failed = 0;
		while (wait(&status) > 0)
			failed |= !WIFEXITED(status) || WEXITSTATUS(status);
		if (failed)
			die("a meta-par child failed");
		report("meta_parallel", t, 4L * n * p);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "seqwrite")) {
		long mib = atol(argv[3]);
		memset(buf, 0x5a, sizeof buf);
		int fd = open(argv[2], O_CREAT | O_TRUNC | O_WRONLY, 0644);
		if (fd < 0)
			die(argv[2]);
		double t = now();
		for (long i = 0; i < mib; i++)
			if (write(fd, buf, sizeof buf) != sizeof buf)
				die("write");
		if (fsync(fd))
			die("fsync");
		report("seq_write", t, mib);
		close(fd);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "seqread")) {
		int fd = open(argv[2], O_RDONLY);
		if (fd < 0)
			die(argv[2]);
		double t = now();
		long n = 0;
		ssize_t r;
		while ((r = read(fd, buf, sizeof buf)) > 0)
			n += r;
		if (r < 0)
			die("read");
		report("seq_read", t, n >> 20);
		close(fd);
		return 0;
	}
	fprintf(stderr, "usage: see the comment in fsbench.c\n");
	return 2;
}
