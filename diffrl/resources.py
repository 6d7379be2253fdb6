"""Cluster resources of every job (memory, wall time, CPUs, GPU), derived from the budget.

The Snakefile's rules take their `resources:` from `job_resources(stage, P)`, so the wall time
a scheduler is asked for grows with the selected budget (`smoke` jobs ask for minutes, `paper`
jobs for hours) and GPU stages ask for a GPU when the run uses CUDA. Each stage's record
(diffrl.pipeline.STAGES) says whether it uses the GPU, how its compute seconds are estimated
(`cost`, from the `Cost` below) and how much data it holds (`data_mb`):

    rule:
        name: _stage
        ...
        resources: **job_resources(_stage, P)

Several jobs share one GPU: the small networks here leave an H200 mostly idle with one job, so a
GPU job does not claim a whole device. It takes one `gpu_slots` unit and asks the cluster for
`gres: gpu:1`: on one machine `snakemake --resources gpu_slots=N` lets N jobs share the GPU; on
SLURM the profile groups the GPU stages so that N jobs share one submission and its one GPU
(`--group-components gpu=N`, docs/scale.md). N comes from benchmarks/gpu_check.sh (aggregate
steps per second against concurrent runs), not from a guess.

Resource values that depend on the job (which algorithm, which retry) are functions of
`(wildcards, attempt)`, which Snakemake evaluates per job; on a retry (`--retries N`, e.g.
after a wall-time kill) the wall time grows with the attempt and the stage resumes from its
checkpoint. Keys follow snakemake-executor-plugin-slurm: `runtime` (minutes, sbatch -t),
`mem_mb` (sbatch --mem), `cpus_per_task` (sbatch --cpus-per-task) and, on a GPU, `gres`
(sbatch --gres=gpu:1; a string, so a group of jobs asks for one GPU, not one per job) and
`gpu_slots` (the count `--resources gpu_slots=N` limits).

The step times are seconds per gradient step with the published network sizes, declared with
each section in the registry (diffrl.algos.REGISTRY: `step_s`, `act_s`): the CPU figures are
measured on one core (benchmarks/bench_steps.py, studies/speed/README.md), the GPU figures are
conservative estimates for small MLPs (kernel-launch bound); a section's one-off setup pass
(`setup_s`) is declared there too. They only size requests: a job
that needs longer is killed by the scheduler, retried with more time, and resumes from its last
checkpoint (runs/.resume/).
"""
from __future__ import annotations

import math

EPISODE_STEPS = 1000          # MuJoCo locomotion episodes (HalfCheetah, and the longest of the others)
STARTUP_S = 60                # interpreter, torch and MuJoCo imports, dataset loading
SAFETY = 2.0                  # requested wall time / estimate
MIN_RUNTIME_MIN = 10          # schedulers round tiny requests up; avoid queue-time-limit edge cases

GPU_GRES = "gpu:1"            # what a GPU job (or a group of GPU jobs) asks the cluster for


def _minutes(seconds: float, attempt: int = 1) -> int:
    return max(MIN_RUNTIME_MIN, math.ceil(SAFETY * attempt * (STARTUP_S + seconds) / 60))


def _mem_mb(megabytes: float, gpu: bool) -> int:
    """Host memory: torch + MuJoCo (about 1.5 GB, 3 GB with a CUDA context) plus the data."""
    base = 3000 if gpu else 2000
    return int(500 * math.ceil((base + megabytes) / 500))


def uses_gpu(params: dict) -> int:
    """1 when the run trains on CUDA: device: cuda, or device: auto on a machine that has one.

    On a cluster the submitting (login) node usually has no GPU: pass `--config device=cuda` there.
    """
    if params["device"] == "cuda":
        return 1
    if params["device"] == "auto":
        return int(cuda_present())
    return 0


def cuda_present() -> bool:
    """Whether `device: auto` finds CUDA, told without importing torch (about a second of every
    `snakemake` call): the installed torch is a CUDA build (its torch/version.py), the NVIDIA driver
    shows a GPU, and CUDA_VISIBLE_DEVICES does not hide them all. A driver too old for the build is
    not seen here: such jobs then ask for a GPU slot and train on the CPU, as `auto` falls back."""
    import ast
    import glob
    import importlib.util
    import os
    from pathlib import Path
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        tree = ast.parse((Path(spec.submodule_search_locations[0]) / "version.py").read_text())
    except (OSError, SyntaxError):
        return False
    cuda = [n.value for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
            and any(getattr(t, "id", "") == "cuda" for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))]
    if not cuda or not isinstance(cuda[0], ast.Constant) or not cuda[0].value:
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/proc/driver/nvidia/gpus/*"))


def _step_s(section: str, gpu: int) -> float:
    """Seconds per gradient step (offline) or update (online) of a section (its registry entry)."""
    from diffrl.algos import REGISTRY
    return REGISTRY[section].step_s[1 if gpu else 0]


def act_seconds(row: str, gpu: int) -> float:
    """Seconds to choose one action for one state with a row's policy (its registry entry)."""
    from diffrl.algos import REGISTRY, section_of
    return REGISTRY[section_of(row)].act_s[1 if gpu else 0]


def _setup_seconds(section: str, budget, gpu: int, states: int) -> float:
    """A section's one-off pass over `states` data states before its first step (its registry entry's
    setup_s), capped by the budget key it names (0: every state)."""
    from diffrl.algos import REGISTRY
    entry = REGISTRY[section]
    cap = getattr(budget, entry.setup_states) if entry.setup_states else 0
    return min(cap or states, states) * entry.setup_s[gpu]


class Cost:
    """What a stage's `cost` (diffrl.pipeline.STAGES) estimates from: the selected budget preset `b`,
    the params, whether the run uses the GPU, and the registry's step and action times."""

    def __init__(self, params: dict, gpu: int):
        self.params, self.gpu = params, gpu
        self.b = params["budgets"][params["budget"]]

    def data_agent(self) -> float:
        """An environment's SAC data agent: its updates and its evaluations."""
        b, gpu = self.b, self.gpu
        return b.sac_steps * _step_s("sac", gpu) + (b.sac_steps // b.sac_eval_every) * 2 * EPISODE_STEPS * 0.001

    def dataset(self) -> float:
        """A task's dataset: its rolled-out episodes (medium-expert: twice as many)."""
        return 2 * self.b.dataset_episodes * EPISODE_STEPS * 0.001

    def train(self, section: str) -> float:
        """An offline run: its steps, its setup pass, and for a row its learning-curve evaluations."""
        from diffrl.algos import REGISTRY, ROWS
        from diffrl.pipeline import budget_steps
        b, gpu = self.b, self.gpu
        steps = budget_steps(section, b)
        seconds = steps * _step_s(section, gpu)
        if any(REGISTRY[section].setup_s):
            seconds += _setup_seconds(section, b, gpu, b.dataset_episodes * EPISODE_STEPS)
        if section in ROWS:  # learning-curve evaluations along the way
            evals = max(0, (steps - 1) // b.eval_every)
            seconds += evals * b.curve_episodes * EPISODE_STEPS * act_seconds(section, gpu)
        return seconds

    def online(self, row: str) -> float:
        """An online run: one update per 5 environment steps after the warm-up, an action per step, and
        its learning-curve evaluations."""
        from diffrl.algos import section_of
        b, gpu = self.b, self.gpu
        per_update = _step_s(section_of(row), gpu)
        updates = max(0, b.online_steps - b.online_warmup) / 5  # every row: one update per 5 env steps
        act = act_seconds(row, gpu)
        evals = max(0, (b.online_steps - 1) // b.online_eval_every)
        episode = b.max_episode_steps or EPISODE_STEPS
        return updates * per_update + (b.online_steps / 5 + evals * b.curve_episodes * episode) * act

    def evaluate(self, row: str) -> float:
        """The final evaluation: eval_episodes episodes, an action and an environment step per step."""
        b = self.b
        return b.eval_episodes * (b.max_episode_steps or EPISODE_STEPS) * (act_seconds(row, self.gpu) + 0.0002)

    def bandit(self, row: str) -> float:
        """A bandit run: the row and the parts it starts from, each for its toy steps, for every seed."""
        from diffrl.algos import PRETRAINED, REGISTRY
        from diffrl.pipeline import toy_steps_key
        b, gpu = self.b, self.gpu
        per_seed = sum(getattr(b, toy_steps_key(s)) * _step_s(s, gpu) for s in (*PRETRAINED.get(row, ()), row))
        if any(REGISTRY[row].setup_s):
            per_seed += _setup_seconds(row, b, gpu, b.toy_samples)
        return len(self.params["seeds"]) * per_seed

    def dataset_mb(self, sac: bool = False) -> float:
        """Transitions (obs, next_obs, action, reward, terminal as float32; obs and action dims below
        32) held twice while loading; the data agent's SAC buffer (`sac`) holds sac_steps more."""
        b = self.b
        transitions = b.dataset_episodes * EPISODE_STEPS + (b.sac_steps if sac else 0)
        return 2 * transitions * (3 * 32 + 2) * 4 / 1e6

    def toy_mb(self) -> float:
        return self.b.toy_samples * 8 * 4 / 1e6


def estimate_seconds(stage: str, params: dict, gpu: int | None = None, **wildcards) -> float:
    """Estimated compute seconds of one job (without start-up), from the selected budget: the stage's
    `cost` in diffrl.pipeline.STAGES."""
    from diffrl.pipeline import section_wildcard
    cost = _stage(stage).cost
    if not callable(cost):
        return cost
    gpu = uses_gpu(params) if gpu is None else gpu
    return cost(Cost(params, gpu), section_wildcard(stage, wildcards))


def _stage(stage: str):
    from diffrl.pipeline import STAGES
    if stage not in STAGES:
        raise KeyError(f"no resource estimate for stage '{stage}': add it to diffrl.pipeline.STAGES "
                       f"(known: {', '.join(STAGES)})")
    return STAGES[stage]


def job_resources(stage: str, params: dict, gpu: int | None = None) -> dict:
    """Snakemake `resources:` of a rule at the selected budget (see the module docstring).

    `params` is the validated params.yaml (diffrl.config.validate); `gpu` overrides the GPU
    decision (default: `uses_gpu(params)` for the stages that train or act).
    """
    st = _stage(stage)
    on_gpu = (uses_gpu(params) if gpu is None else int(gpu)) if st.gpu else 0

    def runtime(wildcards, attempt=1):
        return _minutes(estimate_seconds(stage, params, on_gpu, **dict(wildcards.items())), attempt)

    data_mb = st.data_mb(Cost(params, on_gpu)) if st.data_mb else 0.0
    res = {
        "runtime": runtime,
        "mem_mb": _mem_mb(data_mb, bool(on_gpu)),
        "cpus_per_task": 2 if on_gpu else 1,  # a GPU job's MuJoCo evaluation gets its own core
    }
    if on_gpu:
        res.update(gpu_slots=1, gres=GPU_GRES)
    return res
