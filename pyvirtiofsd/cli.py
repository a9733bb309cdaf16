"""Command line, with the Rust virtiofsd's option names where they exist."""
import argparse
import json
import logging
import os
import signal
import sys

LOG_LEVELS = {"off": logging.CRITICAL + 10, "error": logging.ERROR, "warn": logging.WARNING,
              "info": logging.INFO, "debug": logging.DEBUG, "trace": logging.DEBUG}
CAPABILITIES = {"type": "fs", "features": ["separate-options"]}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, exit 2 (argparse would print the whole usage first)
        sys.stderr.write(f"pyvirtiofsd: {message}\n")
        sys.exit(2)


def build_parser():
    p = _Parser(prog="pyvirtiofsd", description="vhost-user virtio-fs back-end (and /dev/fuse server)")
    p.add_argument("--socket-path", metavar="PATH", help="vhost-user UNIX socket to listen on")
    p.add_argument("--fd", type=int, metavar="N", help="an already listening socket (from libvirt)")
    p.add_argument("--mount", metavar="DIR", help="serve through /dev/fuse on this host directory instead")
    p.add_argument("--shared-dir", metavar="DIR",
                   help="host directory to export (with --backend memory: copied in at start)")
    p.add_argument("--prefill", metavar="DIR|TARBALL", help="memory backend: start with this tree")
    p.add_argument("--backend", choices=["host", "memory"], default="host",
                   help="host: pass through --shared-dir; memory: a tmpfs-like tree in RAM")
    p.add_argument("--memory-size", type=int, metavar="BYTES", help="memory backend: capacity")
    p.add_argument("--tag", default="myfs", help="virtio-fs tag (when the front-end asks the back-end's config)")
    p.add_argument("--cache", choices=["auto", "always", "never", "metadata"], default="auto")
    p.add_argument("--thread-pool-size", type=int, default=0, metavar="N",
                   help="threads serving each request queue (0: the queue's own worker; "
                        "/dev/fuse: worker threads, default 2)")
    p.add_argument("--readdirplus", dest="readdirplus", action="store_true", default=None,
                   help="offer READDIRPLUS (the default, but with --cache never)")
    p.add_argument("--no-readdirplus", dest="readdirplus", action="store_false")
    p.add_argument("--opendir", dest="opendir", action="store_true", default=None,
                   help="answer OPENDIR with directory handles (the default only with --cache never or "
                        "metadata, or a backend that needs them; otherwise the guest lists without)")
    p.add_argument("--no-opendir", dest="opendir", action="store_false")
    p.add_argument("--log-level", choices=list(LOG_LEVELS), default="info")
    p.add_argument("--xattr", dest="xattr", action="store_true", default=True, help="support xattrs (default)")
    p.add_argument("--no-xattr", dest="xattr", action="store_false")
    p.add_argument("--allow-devices", action="store_true", help="let the guest create device nodes")
    p.add_argument("--posix-acl", action="store_true", help="POSIX ACLs (host backend; needs xattrs)")
    p.add_argument("--lower", action="append", default=[], metavar="DIR",
                   help="overlay: a read-only lower layer under --shared-dir (the upper); repeat, highest first")
    p.add_argument("--overlay-workdir", metavar="DIR",
                   help="overlay: work directory on the upper's file system (default: .UPPER.ovl-work beside it)")
    p.add_argument("--userxattr", action="store_true", help="overlay: user.overlay.* xattrs instead of trusted.overlay.*")
    p.add_argument("--metacopy", action="store_true", help="overlay: metadata-only copy-up")
    p.add_argument("--redirect-dir", action="store_true", help="overlay: rename merged directories (redirect xattrs)")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the vhost-user back-end capabilities JSON and exit")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.print_capabilities:
        return args
    if not args.shared_dir and args.backend == "host":
        p.error("--shared-dir is required")
    if args.shared_dir and not os.path.isdir(args.shared_dir):
        p.error(f"--shared-dir {args.shared_dir}: not a directory")
    transports = [x for x in (args.socket_path, args.fd, args.mount) if x is not None]
    if len(transports) != 1:
        p.error("give exactly one of --socket-path, --fd or --mount")
    if args.thread_pool_size < 0:
        p.error("--thread-pool-size must be >= 0")
    if args.prefill and not os.path.exists(args.prefill):
        p.error(f"--prefill {args.prefill}: no such file or directory")
    if args.mount and not os.path.isdir(args.mount):
        p.error(f"--mount {args.mount}: not a directory")
    for d in args.lower:
        if not os.path.isdir(d):
            p.error(f"--lower {d}: not a directory")
    if args.lower and args.backend != "host":
        p.error("--lower needs the host backend (the upper is --shared-dir)")
    return args


def raise_fd_limit():
    """The host backend holds a descriptor per inode the guest knows: allow
    as many as the hard limit does."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_backend(args):
    if args.lower:
        from .vfs.overlay import build_overlay
        return build_overlay(args.shared_dir, args.lower, workdir=args.overlay_workdir,
                             userxattr=args.userxattr, metacopy=args.metacopy,
                             redirect_dir=args.redirect_dir, xattr=args.xattr,
                             allow_devices=args.allow_devices)
    if args.backend == "memory":
        from .vfs.backends.memory import MemoryBackend
        return MemoryBackend(max_bytes=args.memory_size, allow_devices=args.allow_devices,
                             prefill=args.prefill or args.shared_dir)
    from .vfs.backends.host import HostBackend
    return HostBackend(args.shared_dir, xattr=args.xattr, allow_devices=args.allow_devices,
                       posix_acl=args.posix_acl)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.print_capabilities:
        print(json.dumps(CAPABILITIES, indent=2))
        return 0
    raise_fd_limit()
    logging.basicConfig(level=LOG_LEVELS[args.log_level],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log = logging.getLogger("pyvirtiofsd")

    from .protocol.server import FuseServer
    from .vfs.vfs import Vfs

    backend = make_backend(args)
    server = FuseServer(Vfs(backend, cache=args.cache), log_requests=args.log_level == "trace",
                        readdirplus=args.readdirplus, opendir=args.opendir)
    log.info("exporting %s backend %s (cache=%s)", args.backend, args.shared_dir or "", args.cache)
    # bench/ asks for the request count between workloads
    signal.signal(signal.SIGUSR1, lambda *_: log.info("requests served: %d", server.requests))
    try:
        if args.mount:
            from .device import fusedev
            return fusedev.serve(server, args.mount, threads=args.thread_pool_size or 2, log=log)
        from .device import virtio_fs
        return virtio_fs.serve(server, socket_path=args.socket_path, listen_fd=args.fd, tag=args.tag,
                               thread_pool_size=args.thread_pool_size, log=log)
    finally:
        # bench/ reads this line to count requests per CPU second
        log.info("requests served: %d", server.requests)
