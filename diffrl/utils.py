"""Seeds, devices, threads, atomic outputs and checkpoints: the plumbing every stage shares."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, CPU otherwise."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is visible: set device: auto or cpu")
    return torch.device(name)


def run_device(p) -> torch.device:
    """The device of a job from its params (`device`), with its run settings applied to this
    process: TF32 matrix multiplies on CUDA (`tf32`) and the compile mode every agent built here
    gets (`compile`: diffrl.nets.compile_networks, applied by diffrl.offline.build_agent and the
    online and bandit stages)."""
    import torch
    global COMPILE_MODE
    COMPILE_MODE = p["compile"]
    torch.backends.cuda.matmul.allow_tf32 = bool(p["tf32"])  # the networks here have no convolutions
    return pick_device(p["device"])


COMPILE_MODE = "none"  # set by run_device: the `compile` of this process's job


def compiled(model):
    """`model` with its networks compiled as this job's `compile` says (in place); returns it."""
    from diffrl.nets import compile_networks
    compile_networks(model, COMPILE_MODE)
    return model


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (what a SLURM or cgroup allocation grants),
    not every core of the node."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC ...", "Intel(R) Xeon(R) ..."): results and recorded samples
    say which CPU computed them, since kernels round differently across CPU models."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def set_threads(n: int | None = None) -> int:
    """One intra-op thread per Snakemake/DVC job thread (DIFFRL_THREADS, default: the allocated cores)."""
    import torch
    n = n or int(os.environ.get("DIFFRL_THREADS", "0")) or available_cores()
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch; with deterministic, ask torch for deterministic kernels."""
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # On CUDA, deterministic kernels need the cuBLAS workspace setting before cuBLAS starts (the
    # stages call this first) and cuDNN's autotuner off; ops without a deterministic kernel warn.
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # torch.use_deterministic_algorithms also sets TorchInductor's flag, which costs every process a
    # 1 s import of the compiler's config; eager jobs need only the kernel switch, and
    # diffrl.nets.compile_networks sets the compiler's flag from it before compiling
    torch._C._set_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.backends.cudnn.benchmark = False
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def rng_state(generators: dict | None = None) -> dict:
    """Every random state a training loop draws from: python's `random`, numpy's global state,
    torch's CPU generator, each CUDA device's (when CUDA is present) and the loop's own generators
    by name (torch.Generator or numpy.random.Generator). set_rng_state restores it, so a resumed run
    draws exactly what an uninterrupted one would."""
    import torch
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "generators": {name: g.bit_generator.state if isinstance(g, np.random.Generator) else g.get_state()
                            for name, g in (generators or {}).items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict | None = None) -> None:
    """Restore what rng_state captured, into the same named generators. The CUDA states are
    restored when this process sees as many devices as the run that saved them."""
    import torch
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["generators"]
    if set(saved) != set(generators or {}):
        raise RuntimeError(f"the checkpoint holds the generators {sorted(saved)}, this loop has "
                           f"{sorted(generators or {})}")
    for name, g in (generators or {}).items():
        if isinstance(g, np.random.Generator):
            g.bit_generator.state = saved[name]
        else:
            g.set_state(saved[name])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete what killed writers of `path` left behind (`.NAME.tmpPID`, `.NAME.oldPID` of a pid
    that is gone); a live writer's temporary is left alone."""
    for prefix in (f".{path.name}.tmp", f".{path.name}.old"):
        for p in path.parent.glob(prefix + "*"):
            pid = p.name[len(prefix):]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


class OutputWriteError(OSError):
    """An output could not be written (disk full, quota, file size limit, read-only or denied
    folder); the message names the output and the fix."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot write {path}: {reason}: free space there (or make it writable) and rerun; "
                         f"nothing that looks finished was left")
        self.path, self.reason = path, reason


# errors that say the disk, not the computation, failed; EACCES/EPERM count when they name the output
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_DENIED = {errno.EACCES, errno.EPERM}


def _write_failure(e: BaseException | None, path: Path) -> str | None:
    """Why `e` means that `path` could not be written, or None when it is another failure. The
    OSError may sit behind another exception (torch.save raises RuntimeError when its file's
    write fails)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and not isinstance(e, OutputWriteError):
            named = str(e.filename or "").startswith(str(path.parent))
            if e.errno in _FULL_OR_READ_ONLY or (e.errno in _DENIED and named):
                return os.strerror(e.errno)
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling path; rename it onto `path` only if the block finishes.

    A killed or failed stage leaves no file or directory that looks finished, and a previous
    good output stays in place until the new one is complete. A write that fails for lack of
    space or permission raises OutputWriteError naming `path` (the stages print it as one line).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(path, _write_failure(e, path) or e.strerror or str(e)) from e
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    try:
        yield tmp
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        if isinstance(e, OutputWriteError) and tmp in e.path.parents:  # a file inside: name this output
            raise OutputWriteError(path, e.reason) from e
        reason = _write_failure(e, path)
        if reason:
            raise OutputWriteError(path, reason) from e
        raise
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it (snakemake {path})")
    return json.loads(path.read_text())


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write a checkpoint atomically and durably: a crash at any point leaves the previous file."""
    import torch
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)  # through a Python file, so a failed write raises the OSError behind it
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    import torch
    path = Path(path)
    if not path.exists():
        # a model inside a run folder is built by the rule whose output is the folder
        target = path.parent if re.fullmatch(r"seed\d+", path.parent.name) else path
        raise FileNotFoundError(f"checkpoint {path} is missing: run the stage that writes it "
                                f"(snakemake {target})")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}): delete it and "
                           f"rerun the stage that writes it") from None
