"""Recovering from a killed Snakemake: the lock it leaves behind is removed when that is safe.

Snakemake locks the working directory (.snakemake/locks/) for the length of a run and removes the
lock when it exits. A scheduler killed with SIGKILL (a preempted node, an out-of-memory kill)
cannot, and the next run stops with "Directory cannot be locked". The Snakefile's `onstart`, which
runs after Snakemake has taken its lock, records who holds it (`record_owner`: host, pid, time);
before the next run takes its lock, `clear_stale_lock` removes the lock files when

- the recorded owner ran on this host and its process no longer exists, and
- no lock file is newer than that record (so the lock is the recorded run's, not one taken since
  by a run that has not reached its `onstart` yet).

Otherwise it leaves the lock alone and Snakemake's own message stands (docs/troubleshooting.md:
`snakemake --unlock` once no other Snakemake runs in this directory). Either way, the rerun
resumes every interrupted training job from its last checkpoint (runs/.resume/; the profile's
`rerun-incomplete: true` reruns the jobs the killed run left unfinished).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

LOCKS = Path(".snakemake/locks")
OWNER = Path(".snakemake/diffrl_lock_owner.json")


def record_owner() -> None:
    """Called from `onstart`, while this process holds the lock."""
    OWNER.parent.mkdir(parents=True, exist_ok=True)
    tmp = OWNER.with_name(f".{OWNER.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
    tmp.replace(OWNER)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that pid
        return True
    return True


def clear_stale_lock() -> bool:
    """Remove the lock of a killed run when it is safe (module docstring); True if removed."""
    locks = list(LOCKS.glob("*.lock")) if LOCKS.is_dir() else []
    if not locks or not OWNER.is_file():
        return False
    try:
        owner = json.loads(OWNER.read_text())
        host, pid, since = owner["host"], int(owner["pid"]), OWNER.stat().st_mtime
    except (ValueError, KeyError, TypeError, OSError):
        return False
    if host != socket.gethostname() or pid == os.getpid() or _alive(pid):
        return False
    if any(lock.stat().st_mtime > since for lock in locks):
        return False
    for lock in locks:
        lock.unlink(missing_ok=True)
    print(f"note: removed the lock of a killed Snakemake run (pid {pid} on {host}); interrupted jobs rerun "
          f"and resume from their checkpoints", file=sys.stderr, flush=True)
    return True
