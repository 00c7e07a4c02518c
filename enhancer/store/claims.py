"""Exclusive claims on shards: two jobs never write one shard at once.

Usage::

    from enhancer.store.claims import claim_shard
    with claim_shard(shard_path("out", 3, 8), job={"slurm_job_id": "812"}) as claim:
        ...   # write out/shard-00003-of-00008.h5.tmp, rename it to its final name
    # meanwhile a second job on shard 3 gets ShardClaimedError: "... is being written by pid 4711 on host node12
    # since 2026-03-01T10:00:00+00:00 (SLURM job 812) ..."

A claim is the file ``shard-00003-of-00008.h5.lock`` beside the shard's ``.tmp`` (``layout.lock_path_for``), with
a POSIX record lock (``fcntl.lockf``) on it for as long as the job holds the claim, and in it, as JSON, who holds
it: host, boot id, pid and the process's start time, the caller's job ids (the command line passes SLURM's job and
array ids; library code never reads ``SLURM_*``) and since when. The holder touches the file every
``HEARTBEAT_S`` seconds (its modification time is the claim's heartbeat) and removes it when it is done.

Who gets the shard:

- The lock is held by another process: the claim is refused (``ShardClaimedError``, exit code 2 from the command
  line), naming the holder.
- The lock is free and the file is absent or empty: a new claim.
- The lock is free but the file names an earlier holder, which ended without releasing (killed, crashed): its
  claim is stale and taken over with a warning when
  - the holder ran on this host (same host name and boot id) and its process is gone (no such pid, a zombie,
    or a newer process under the same pid), or
  - the holder was an earlier run of the claiming job itself (the same SLURM job id on the same cluster, as the
    caller's ``job`` ids say): a task requeued after its node failed, which SLURM never runs twice at once, or
  - the holder ran on another host and its heartbeat is older than ``STALE_AFTER_S`` (10 minutes). A free lock
    alone does not prove that a holder on another host is gone: on network filesystems whose locks do not reach
    across hosts (Lustre without ``-o flock``, NFS without a lock manager) a running job's lock is invisible here.
    Until its heartbeat has aged, such a claim is refused; wait, or take it over explicitly (``force``).
  A holder on this host whose process still runs is refused: the filesystem does not enforce the lock.
- ``force=True`` (``--force-claim``) takes over any claim, held or not, with a warning: for a holder whose host
  crashed while the file server still keeps its lock (NFSv3 keeps it until the client reboots). Never use it
  while the holder may still be writing: both jobs would write the same ``.tmp``.

On a filesystem without lock support at all (``lockf`` fails with ENOLCK or EOPNOTSUPP) the claim falls back to the
file's contents and the rules above, with a warning.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from enhancer.store.layout import lock_path_for
from enhancer.store.schema import StoreError

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0  # how often a holder refreshes its claim's modification time
STALE_AFTER_S = 600.0  # a claim from another host whose heartbeat is older than this is stale
_JOB_IDENTITY = ("slurm_job_id", "slurm_cluster_name")  # job ids (as the command line records them) naming one job
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
_HELD_ELSEWHERE = (errno.EAGAIN, errno.EACCES)
# Claims this process holds, by lock path: POSIX locks do not conflict within one process, so a second claim here is
# refused from this table (and no second descriptor is ever opened on a held file, which would drop its lock).
_HELD: dict[str, ShardClaim] = {}
_HELD_LOCK = threading.Lock()


class ShardClaimedError(StoreError):
    """Another job holds the claim on the shard; ``holder`` says who (None when its claim file is unreadable)."""

    def __init__(self, message: str, holder: ClaimInfo | None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class ClaimInfo:
    """Who holds (or held) a claim: what the claim file records."""

    host: str
    pid: int
    since: str  # ISO 8601, UTC
    boot_id: str = ""
    pid_start: int | None = None  # the process's start time in clock ticks after boot (/proc/PID/stat field 22)
    job: dict[str, str] = field(default_factory=dict)  # the caller's job ids, e.g. SLURM's
    heartbeat_age_s: float | None = None  # seconds since the holder last touched the file (when read back)

    def describe(self) -> str:
        """``pid 4711 on host node12 since 2026-03-01T10:00:00+00:00 (slurm_job_id=812)``."""
        text = f"pid {self.pid} on host {self.host} since {self.since}"
        if self.job:
            text += f" ({', '.join(f'{k}={v}' for k, v in sorted(self.job.items()))})"
        if self.heartbeat_age_s is not None:
            text += f", last heartbeat {self.heartbeat_age_s:.0f} s ago"
        return text

    def to_json(self) -> str:
        values = asdict(self)
        values.pop("heartbeat_age_s")
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, heartbeat_age_s: float | None = None) -> ClaimInfo | None:
        """The holder recorded in a claim file, or None when the text is empty or not a claim."""
        try:
            values = json.loads(text)
            return cls(
                host=str(values["host"]),
                pid=int(values["pid"]),
                since=str(values["since"]),
                boot_id=str(values.get("boot_id", "")),
                pid_start=None if values.get("pid_start") is None else int(values["pid_start"]),
                job={str(k): str(v) for k, v in dict(values.get("job") or {}).items()},
                heartbeat_age_s=heartbeat_age_s,
            )
        except (ValueError, KeyError, TypeError):
            return None


def this_process(job: dict[str, str] | None = None) -> ClaimInfo:
    """The claim record of the calling process."""
    pid = os.getpid()
    return ClaimInfo(
        host=socket.gethostname(),
        pid=pid,
        since=datetime.now(UTC).isoformat(timespec="seconds"),
        boot_id=_boot_id(),
        pid_start=_process_start(pid),
        job=dict(job or {}),
    )


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks after boot; None when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, starttime field 22
    return None if fields[0] in ("Z", "X") else int(fields[19])


def holder_is_gone(holder: ClaimInfo) -> bool:
    """Whether a holder on this host (same host name and boot id) no longer runs. False for other hosts."""
    me = this_process()
    if holder.host != me.host:
        return False
    if holder.boot_id and me.boot_id and holder.boot_id != me.boot_id:
        return True  # recorded before this host last booted
    if not Path("/proc").is_dir():  # no procfs: whether the pid exists is all we can ask
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    started = _process_start(holder.pid)
    return started is None or (holder.pid_start is not None and started != holder.pid_start)


def read_claim(shard: str | os.PathLike[str]) -> ClaimInfo | None:
    """The holder recorded in shard ``shard``'s claim file (None: no claim file, or an empty one). Reads only, so it
    never disturbs the holder's lock."""
    lock = lock_path_for(Path(shard))
    with _HELD_LOCK:
        mine = _HELD.get(str(lock))
    try:
        age = max(0.0, time.time() - lock.stat().st_mtime)
        if mine is not None and mine.info is not None:  # never open a file this process holds a lock on
            return dataclasses.replace(mine.info, heartbeat_age_s=age)
        return ClaimInfo.from_json(lock.read_text(encoding="utf-8"), heartbeat_age_s=age)
    except OSError:
        return None


class ShardClaim:
    """The claim on one shard (see the module docstring): ``acquire`` / ``release`` or a ``with`` block.

    ``job``: the caller's job ids recorded with the claim (e.g. SLURM's); ``force``: take over a claim that another
    process seems to hold; ``stale_after_s``: heartbeat age after which another host's claim is stale.
    ``taken_over`` is the earlier holder when a stale claim was taken over.
    """

    def __init__(
        self,
        shard: str | os.PathLike[str],
        *,
        job: dict[str, str] | None = None,
        force: bool = False,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.shard = Path(shard)
        self.path = lock_path_for(self.shard)
        self.job = dict(job or {})
        self.force = force
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.info: ClaimInfo | None = None
        self.taken_over: ClaimInfo | None = None
        self._fd: int | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()

    def acquire(self) -> Self:
        """Take the claim or raise ``ShardClaimedError`` naming its holder."""
        if self._fd is not None:
            return self
        with _HELD_LOCK:
            mine = _HELD.get(str(self.path))
            if mine is not None:
                raise self._refusal(mine.info, "this process already writes it")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, locked = _open_and_lock(self.path)
            try:
                self._decide(fd, locked)
                self.info = this_process(self.job)
                _write_record(fd, self.info)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            _HELD[str(self.path)] = self
        self._heartbeat = threading.Thread(target=self._beat, name=f"claim-{self.shard.name}", daemon=True)
        self._heartbeat.start()
        log.info("claimed %s (%s)", self.shard.name, self.info.describe())
        return self

    def release(self) -> None:
        """Remove the claim file and drop the lock (the file goes first, so a waiter never locks a dead file)."""
        if self._fd is None:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        with _HELD_LOCK:
            try:
                record = _read_record(self._fd, self.path)
                if record is None or (record.host, record.pid) == (self.info.host, self.info.pid):  # type: ignore[union-attr]
                    self.path.unlink(missing_ok=True)  # not when another job took it over with --force-claim
            except OSError as e:
                log.warning("could not remove the claim %s (%s); the next job will take it over", self.path, e)
            os.close(self._fd)
            self._fd = None
            _HELD.pop(str(self.path), None)

    def _decide(self, fd: int, locked: bool | None) -> None:
        """Raise unless this process may take the claim: ``locked`` True (lock taken), False (held elsewhere) or
        None (the filesystem has no locks)."""
        holder = _read_record(fd, self.path)
        if locked is False:
            if self.force:
                self._take_over(holder, "its lock is still held")
                return
            raise self._refusal(holder, "its lock is held")
        if holder is None:
            return
        if holder_is_gone(holder):
            self._take_over(holder, "its process is gone")
        elif self._same_job(holder):
            self._take_over(holder, "an earlier run of this same job, requeued")
        elif holder.host != socket.gethostname() and (holder.heartbeat_age_s or 0.0) > self.stale_after_s:
            self._take_over(holder, f"its heartbeat is older than {self.stale_after_s:.0f} s")
        elif self.force:
            self._take_over(holder, "forced")
        else:
            raise self._refusal(holder, "it may still be running")

    def _same_job(self, holder: ClaimInfo) -> bool:
        """Whether ``holder`` was an earlier run of the job now claiming (the same SLURM job id on the same cluster:
        a requeued task keeps its id, and SLURM never runs one job twice at once)."""
        mine = {k: self.job.get(k) for k in _JOB_IDENTITY}
        return mine[_JOB_IDENTITY[0]] is not None and mine == {k: holder.job.get(k) for k in _JOB_IDENTITY}

    def _take_over(self, holder: ClaimInfo | None, why: str) -> None:
        self.taken_over = holder
        who = holder.describe() if holder is not None else "an unreadable claim"
        log.warning("taking over the stale claim on %s of %s (%s)", self.shard.name, who, why)

    def _refusal(self, holder: ClaimInfo | None, why: str) -> ShardClaimedError:
        who = holder.describe() if holder is not None else "a process whose claim file is still being written"
        return ShardClaimedError(
            f"shard {self.shard.name} in {self.shard.parent} is being written by {who} ({why}): two jobs must not "
            f"write one shard. Wait for that job or stop it; if it is gone (a crashed host whose lock the file "
            f"server keeps), remove {self.path} or rerun with --force-claim",
            holder,
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self._fd)  # type: ignore[arg-type]
            except OSError as e:
                log.warning("could not refresh the claim %s (%s)", self.path, e)


def claim_shard(shard: str | os.PathLike[str], **options: Any) -> ShardClaim:
    """A claim on ``shard`` (``ShardClaim`` options), not yet taken: use it as ``with claim_shard(path) as c``."""
    return ShardClaim(shard, **options)


def _open_and_lock(path: Path) -> tuple[int, bool | None]:
    """An open descriptor of the claim file at ``path`` and whether its lock was taken (None: no lock support)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _HELD_ELSEWHERE:
                return fd, False
            if e.errno in _NO_LOCKS:
                log.warning("%s: the filesystem has no file locks (%s); claims rely on their contents", path, e)
                return fd, None
            os.close(fd)
            raise
        # The previous holder removes the file before unlocking it: a lock on a removed file guards nothing.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd, True
        os.close(fd)


def _read_record(fd: int, path: Path) -> ClaimInfo | None:
    st = os.fstat(fd)
    text = os.pread(fd, max(st.st_size, 0), 0).decode("utf-8", "replace") if st.st_size else ""
    if text.strip() and ClaimInfo.from_json(text) is None:
        log.warning("%s holds no readable claim (%r...)", path, text[:80])
    return ClaimInfo.from_json(text, heartbeat_age_s=max(0.0, time.time() - st.st_mtime)) if text else None


def _write_record(fd: int, info: ClaimInfo) -> None:
    data = info.to_json().encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
