"""Surviving a killed scheduler: its lock is removed when that is safe, and its jobs stop with it.

Snakemake locks the working directory (.snakemake/locks/) for the length of a run and removes the
lock when it exits. A scheduler killed with SIGKILL (a preempted node, an out-of-memory kill)
cannot, and the next run would stop with "Directory cannot be locked". So every Snakemake that
parses the Snakefile registers itself before it can take the lock (`register_run`: one file per
process in .snakemake/diffrl_runs/ with host, pid and the process's start time), and before the
next run takes its lock, `clear_stale_lock` removes the lock files when every run that registered
before the lock was taken (the only runs that can hold it) ran on this host and no longer exists.
A lock with no such registration, or with one from another host or still alive, is left alone and
Snakemake's own message stands (docs/troubleshooting.md: `snakemake --unlock` once no other
Snakemake runs in this directory).

A scheduler killed alone leaves its jobs running; a rerun would start the same jobs beside them.
`stop_with_scheduler`, started by every stage (diffrl.stage), watches the processes between the
job and its scheduler (the shell Snakemake or DVC started it with, and the scheduler itself) and
ends the job, as a SIGKILL of the whole process group would, within a second of any of them
dying, or at once when the scheduler that started it (named in its environment: Snakemake's pid,
or DVC's DVC_STAGE) is no longer among its ancestors when it starts. That is safe because a stage writes its outputs and resume checkpoints atomically: a job
stopped at any instant leaves its last checkpoint and nothing that looks finished. The rerun
resumes every interrupted training job from its checkpoint (runs/.resume/; the profile's
`rerun-incomplete: true` reruns the jobs the killed run left unfinished).
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import psutil

LOCKS = Path(".snakemake/locks")
RUNS = Path(".snakemake/diffrl_runs")
SCHEDULERS = ("snakemake", "dvc")  # an ancestor running one of these programs schedules the job
POLL_S = 0.5
SCHEDULER_ENV = "DIFFRL_SCHEDULER"


def _started(pid: int) -> float | None:
    """The start time of process `pid`, or None if there is none (a reused pid has another)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # another user's process: alive, start time unknown
        return -1.0


def _alive(pid: int, started: float) -> bool:
    now = _started(pid)
    return now is not None and (now == -1.0 or abs(now - started) < 0.01)


def register_run() -> None:
    """Called at Snakefile parse time in the main process, before Snakemake takes its lock."""
    RUNS.mkdir(parents=True, exist_ok=True)
    me = RUNS / f"{socket.gethostname()}-{os.getpid()}.json"
    tmp = me.with_name(f".{me.name}.tmp")
    tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": _started(os.getpid()),
                               "time": time.time()}))
    tmp.replace(me)
    atexit.register(me.unlink, missing_ok=True)  # a normal exit, failed or not, needs no record
    # the jobs inherit who started them, so a job whose scheduler died before the job could look
    # for it stops at once (stop_with_scheduler); a job on another host ignores it
    os.environ[SCHEDULER_ENV] = f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid())}"


def _registrations() -> list[tuple[Path, dict]]:
    out = []
    for f in RUNS.glob("*.json") if RUNS.is_dir() else []:
        try:
            r = json.loads(f.read_text())
            out.append((f, {"host": str(r["host"]), "pid": int(r["pid"]), "started": float(r["started"]),
                            "time": float(r["time"])}))
        except (ValueError, KeyError, TypeError, OSError):
            continue  # half-written or foreign: it names no process
    return out


def clear_stale_lock() -> bool:
    """Remove the lock of a killed run when it is safe (module docstring); True if removed."""
    host, regs = socket.gethostname(), _registrations()
    dead = [(f, r) for f, r in regs if r["host"] == host and r["pid"] != os.getpid()
            and not _alive(r["pid"], r["started"])]
    locks = list(LOCKS.glob("*.lock")) if LOCKS.is_dir() else []
    if not locks:
        for f, _ in dead:  # no lock to explain: the dead runs' records serve nothing
            f.unlink(missing_ok=True)
        return False
    taken = min(lock.stat().st_mtime for lock in locks)
    before = [r for _, r in regs if r["time"] <= taken + 1.0 and r["pid"] != os.getpid()]  # 1 s: coarse mtimes
    dead_ids = {(r["host"], r["pid"]) for _, r in dead}
    if not before or any((r["host"], r["pid"]) not in dead_ids for r in before):
        return False  # no run can be named as the lock's owner, or one that may own it may be alive
    for lock in locks:
        lock.unlink(missing_ok=True)
    for f, _ in dead:
        f.unlink(missing_ok=True)
    pids = ", ".join(str(r["pid"]) for r in before)
    print(f"note: removed the lock of a killed Snakemake run (pid {pids} on {host}); interrupted jobs rerun "
          f"and resume from their checkpoints", file=sys.stderr, flush=True)
    return True


def _scheduler_chain() -> tuple[list[tuple[int, float]], str | None]:
    """(pid, start time) of every ancestor of this process up to its scheduler, and the scheduler
    this job was started by but that is no longer among its ancestors (it died before the job got
    here: stop at once), or None. ([], None): started by hand, by a test or by a scheduler this
    module does not know, so nothing to watch."""
    mine = os.environ.get(SCHEDULER_ENV, "").split(":")  # host:pid:start of the Snakemake that started us
    env_pid = int(mine[1]) if len(mine) == 3 and mine[0] == socket.gethostname() else None
    chain = []
    try:
        proc = psutil.Process().parent()
        while proc is not None and proc.pid > 1:
            chain.append((proc.pid, proc.create_time()))
            if proc.pid == env_pid or any(Path(arg).name in SCHEDULERS for arg in proc.cmdline()[:3]):
                return chain, None
            proc = proc.parent()
    except (psutil.Error, OSError):
        return [], None
    if env_pid is not None:
        return [], f"Snakemake (pid {env_pid})"
    if os.environ.get("DVC_STAGE"):  # DVC sets it for every stage command it runs
        return [], f"DVC (stage {os.environ['DVC_STAGE']})"
    return [], None


def _stop(who: str) -> None:
    print(f"note: {who}, which started this job, is gone: stopping; the rerun resumes from the last checkpoint",
          file=sys.__stderr__, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def stop_with_scheduler() -> None:
    """End this job within POLL_S of its scheduler (or the shell between) dying (module docstring);
    at once when the scheduler died while the job was starting."""
    chain, gone = _scheduler_chain()
    if gone:
        _stop(gone)
    if not chain:
        return

    def watch():
        while True:
            time.sleep(POLL_S)
            for pid, started in chain:
                if not _alive(pid, started):
                    _stop(f"the process pid {pid}")

    threading.Thread(target=watch, name="stop-with-scheduler", daemon=True).start()
