"""A minimal local batch queue behind the generic-cluster profile: submit.py, status.py and
cancel.py. Jobs run detached on this machine (own session, so Snakemake exiting or a job being
killed leaves the others alone); their state lives in $LOCALQ_DIR (default .snakemake/localq):
JOBID.json (pid, requested resources), JOBID.log (output), JOBID.exit (exit code, written when
the job ends). Replace these three scripts by your scheduler's submit, status and cancel
commands (see config.yaml)."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("LOCALQ_DIR", ".snakemake/localq"))


def _start_ticks(pid: int) -> int | None:
    """Start time of a live, non-zombie process (None when gone), to tell it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return int(fields[19])


def submit(jobscript: str, name: str, runtime_min: float, mem_mb: int, cpus: int) -> str:
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    jobid = f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.{uuid.uuid4().hex[:8]}"
    exit_file = d / f"{jobid}.exit"
    # the wall-time limit is enforced as a scheduler would: SIGKILL when it runs out
    limit = f"timeout --signal=KILL {max(1, round(runtime_min * 60))}s " if runtime_min > 0 else ""
    part = shlex.quote(f"{exit_file}.part")
    cmd = (f"{limit}/bin/sh {shlex.quote(jobscript)}; echo $? > {part} && "
           f"mv {part} {shlex.quote(str(exit_file))}")
    with open(d / f"{jobid}.log", "ab") as log:
        proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    info = {"pid": proc.pid, "start": _start_ticks(proc.pid), "jobscript": jobscript, "name": name,
            "runtime_min": runtime_min, "mem_mb": mem_mb, "cpus": cpus, "submitted": time.time()}
    tmp = d / f".{jobid}.json.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, d / f"{jobid}.json")
    return jobid


def status(jobid: str) -> str:
    """running | success | failed (a job that vanished without an exit code was killed)."""
    d = state_dir()
    exit_file = d / f"{jobid}.exit"
    if exit_file.exists():
        return "success" if exit_file.read_text().strip() == "0" else "failed"
    try:
        info = json.loads((d / f"{jobid}.json").read_text())
    except (OSError, ValueError):
        return "failed"
    ticks = _start_ticks(info["pid"])
    if ticks is not None and (info["start"] is None or ticks == info["start"]):
        return "running"
    return "success" if exit_file.exists() and exit_file.read_text().strip() == "0" else "failed"


def cancel(jobid: str) -> None:
    try:
        info = json.loads((state_dir() / f"{jobid}.json").read_text())
    except (OSError, ValueError):
        return
    if _start_ticks(info["pid"]) == info["start"]:
        try:
            os.killpg(info["pid"], signal.SIGTERM)  # the job's own session and process group
        except ProcessLookupError:
            pass
