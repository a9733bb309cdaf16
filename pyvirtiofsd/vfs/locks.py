"""Advisory locks kept by the VFS, for every backend: POSIX record locks
(per lock owner, byte ranges split and merged as fcntl does) and flock
locks (per open file, whole file). Blocking requests wait on a condition
until they can be granted or are cancelled (FUSE INTERRUPT).

Locks are local to this daemon: they order the guests (or host processes)
that share this export, not other users of the backing store.
"""
import errno
import fcntl
import threading

OFFSET_MAX = (1 << 63) - 1


class Lock:
    __slots__ = ("owner", "pid", "start", "end", "type")

    def __init__(self, owner, pid, start, end, type_):
        self.owner, self.pid, self.start, self.end, self.type = owner, pid, start, end, type_

    def overlaps(self, start, end):
        return self.start <= end and start <= self.end

    def __repr__(self):
        return f"Lock(owner={self.owner}, {self.start}-{self.end}, type={self.type})"


def _conflicts(lk, owner, start, end, type_):
    return (lk.owner != owner and lk.overlaps(start, end)
            and (type_ == fcntl.F_WRLCK or lk.type == fcntl.F_WRLCK))


class Waiter:
    """A blocked SETLKW; cancel() makes its wait end with EINTR."""
    __slots__ = ("cancelled",)

    def __init__(self):
        self.cancelled = False


class LockTable:
    def __init__(self):
        self._cond = threading.Condition()
        self._posix = {}      # key -> [Lock]
        self._flock = {}      # key -> [Lock] (owner = open file)

    def _table(self, flock):
        return self._flock if flock else self._posix

    def getlk(self, key, owner, start, end, type_, flock=False):
        """-> the first lock that would block this one, or None."""
        with self._cond:
            for lk in self._table(flock).get(key, ()):
                if _conflicts(lk, owner, start, end, type_):
                    return lk
        return None

    def setlk(self, key, owner, pid, start, end, type_, *, flock=False, waiter=None):
        """Set or clear (F_UNLCK) a lock. Without a waiter a conflict raises
        EAGAIN; with one, wait until it clears or the waiter is cancelled."""
        if start < 0 or end < start:
            raise OSError(errno.EINVAL, "bad lock range")
        table = self._table(flock)
        with self._cond:
            while type_ != fcntl.F_UNLCK and any(
                    _conflicts(lk, owner, start, end, type_) for lk in table.get(key, ())):
                if waiter is None:
                    raise OSError(errno.EAGAIN, "lock held by another owner")
                if waiter.cancelled:
                    raise OSError(errno.EINTR, "lock wait interrupted")
                self._cond.wait()
            locks = _replace_range(table.get(key, []), owner, pid, start, end, type_)
            if locks:
                table[key] = locks
            else:
                table.pop(key, None)
            self._cond.notify_all()

    def release_owner(self, key, owner, flock=False):
        """Drop every lock of owner on key (close, flush, release)."""
        table = self._table(flock)
        with self._cond:
            locks = table.get(key)
            if not locks:
                return
            kept = [lk for lk in locks if lk.owner != owner]
            if kept:
                table[key] = kept
            else:
                del table[key]
            self._cond.notify_all()

    def cancel(self, waiter):
        with self._cond:
            waiter.cancelled = True
            self._cond.notify_all()

    def held(self, key, flock=False):
        with self._cond:
            return list(self._table(flock).get(key, ()))


def _replace_range(locks, owner, pid, start, end, type_):
    """owner's locks after setting [start, end] to type_ (F_UNLCK clears):
    the range is cut out of owner's existing locks, then the new lock is
    merged with owner's adjacent or overlapping locks of the same type.
    As in the kernel's list, an owner's locks stay together, sorted by start,
    where its first lock was (GETLK reports the first conflict in this order)."""
    out = []
    for lk in locks:
        if lk.owner != owner or not lk.overlaps(start, end):
            out.append(lk)
            continue
        if lk.start < start:
            out.append(Lock(owner, lk.pid, lk.start, start - 1, lk.type))
        if lk.end > end:
            out.append(Lock(owner, lk.pid, end + 1, lk.end, lk.type))
    if type_ == fcntl.F_UNLCK:
        return out
    new = Lock(owner, pid, start, end, type_)
    merged = []
    for lk in out:
        if (lk.owner == owner and lk.type == type_
                and lk.start <= (new.end + 1 if new.end < OFFSET_MAX else new.end)
                and new.start <= (lk.end + 1 if lk.end < OFFSET_MAX else lk.end)):
            new.start, new.end = min(new.start, lk.start), max(new.end, lk.end)
        else:
            merged.append(lk)
    merged.append(new)
    first = next((i for i, lk in enumerate(locks) if lk.owner == owner), len(locks))
    others = [lk for lk in merged if lk.owner != owner]
    mine = sorted((lk for lk in merged if lk.owner == owner), key=lambda lk: lk.start)
    at = sum(1 for lk in locks[:first] if lk.owner != owner and lk in others)
    return others[:at] + mine + others[at:]
