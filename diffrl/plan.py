"""The cost plan: what a run will do and how long it will take, printed before its first job.

    python -m diffrl.plan results/halfcheetah_summary.csv --config budget=smoke   # print, run nothing
    snakemake --cores 2 results/halfcheetah_summary.csv                          # prints it, then runs
    dvc exp run -S budget=smoke                                                   # its `plan` stage prints it

One table: per row, the jobs to run and those already cached, and their estimated compute time;
then the estimated wall time of the whole run on this machine (the jobs scheduled on its cores,
or one after the other for DVC, which runs one stage at a time). Job costs come from the
registry's per-step and per-action seconds (diffrl.algos.REGISTRY, measured by
benchmarks/bench_steps.py on one core) through diffrl.resources.estimate_seconds, the same
figures that size cluster requests. docs/budgets.md compares these estimates with measured runs.

`max_hours` (params.yaml) stops a run whose estimated wall time exceeds it before any job runs,
with one line naming the slowest rows and the ways out. It caps the default target (bare
`snakemake`, `dvc repro`, `dvc exp run`); an explicit target is capped only when max_hours is
given on the command line (`--config max_hours=N`).

What counts as cached is each front end's own decision: Snakemake's (its DAG, in the Snakefile's
`onstart`), or for DVC a stage whose dvc.lock entry records the current params values and code
hashes and whose outputs exist, with everything downstream of a job to run also to run.
"""
from __future__ import annotations

import hashlib
import heapq
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

JOB_OVERHEAD_S = 8.0    # one job's start-up on top of its compute (interpreter, torch, MuJoCo, data loading)
PLAN_ONLY_ENV = "DIFFRL_PLAN_ONLY"   # set by `python -m diffrl.plan`: the Snakefile prints the plan and stops
WAYS_OUT = ("pick rows (--config 'algorithms=[bc, iql]' or -S 'algorithms=[bc, iql]'), run on a GPU "
            "(device=cuda), use the SLURM profile (--workflow-profile workflow/profiles/slurm), or raise max_hours")


class PlanError(SystemExit):
    """The estimate exceeds max_hours: the message is the one line the user sees."""


@dataclass
class Job:
    stage: str
    wildcards: dict
    cached: bool
    deps: list[int] = field(default_factory=list)   # indices of the jobs it waits for
    seconds: float = 0.0

    @property
    def row(self) -> str:
        """The table row a job counts towards: its stage's `plan_row`, else the section it trains or
        evaluates, else its stage."""
        from diffrl.pipeline import STAGES
        st = STAGES[self.stage]
        return st.plan_row or (self.wildcards.get(st.row) if st.row else "") or self.stage


def estimate(jobs: list[Job], params: dict, gpu: int) -> None:
    from diffrl.dag import row_wildcards
    from diffrl.resources import estimate_seconds
    for j in jobs:
        w = row_wildcards(j.stage, j.wildcards)
        j.seconds = JOB_OVERHEAD_S + estimate_seconds(j.stage, params, gpu, **w)


def makespan(jobs: list[Job], workers: int) -> float:
    """Wall time of running the uncached jobs on `workers` slots, each as soon as its inputs exist,
    longest first among the ready ones (list scheduling)."""
    todo = {i for i, j in enumerate(jobs) if not j.cached}
    waiting = {i: {d for d in jobs[i].deps if d in todo} for i in todo}
    ready = [(-jobs[i].seconds, i) for i in todo if not waiting[i]]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []   # (finish time, job)
    now = 0.0
    while ready or running:
        while ready and len(running) < workers:
            _, i = heapq.heappop(ready)
            heapq.heappush(running, (now + jobs[i].seconds, i))
        now, done = heapq.heappop(running)
        for i in todo:
            if done in waiting[i]:
                waiting[i].discard(done)
                if not waiting[i]:
                    heapq.heappush(ready, (-jobs[i].seconds, i))
    return now


def hours(seconds: float) -> str:
    if seconds < 60:
        return "<1 min"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _order(row: str) -> tuple[int, int]:
    """Table order: the registry's sections (pretraining before the rows that start from it); before
    them the rows of the stages that come before every stage with a row (the dataset), after them the
    others (the tables, the bandit study), each at its last stage's place in the pipeline."""
    from diffrl.algos import BEHAVIORS, CRITICS, ROWS
    from diffrl.pipeline import STAGES
    sections = [*CRITICS, *BEHAVIORS, *ROWS]
    if row in sections:
        return 1, sections.index(row)
    place = max((i for i, (name, st) in enumerate(STAGES.items()) if (st.plan_row or name) == row), default=len(STAGES))
    first_row_stage = min(i for i, st in enumerate(STAGES.values()) if st.row)
    return (0 if place < first_row_stage else 2), place


def report(jobs: list[Job], params: dict, workers: int, where: str, gpu: int = 0) -> tuple[str, float, list[str]]:
    """(the table, estimated wall seconds, the rows by compute time, slowest first). Rows that act
    (offline, online and tilted rows) also show their evaluation cost per action, the registry's
    act_s (for a tilted row, at params.yaml's tilt settings: benchmarks/bench_tilts.py)."""
    from diffrl.algos import ROWS
    from diffrl.resources import act_seconds
    rows: dict[str, list[Job]] = {}
    for j in sorted(jobs, key=lambda j: _order(j.row)):
        rows.setdefault(j.row, []).append(j)
    compute = {r: sum(j.seconds for j in js if not j.cached) for r, js in rows.items()}
    wall = makespan(jobs, workers)
    width = max([len(r) for r in rows] + [4])
    lines = [f"cost plan: budget `{params['budget']}`, {len(params['seeds'])} seed(s), {where}",
             f"  {'row':<{width}}  to run  cached  compute  ms/action"]
    for r, js in rows.items():
        run = sum(not j.cached for j in js)
        ms = act_seconds(r, gpu) * 1000 if r in ROWS else None
        act = "-" if ms is None else f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"
        lines.append(f"  {r:<{width}}  {run:>6}  {len(js) - run:>6}  {hours(compute[r]) if run else '-':>7}  "
                     f"{act:>9}")
    total = sum(compute.values())
    n_run = sum(not j.cached for j in jobs)
    lines.append(f"  total: {n_run} job(s) to run, {len(jobs) - n_run} cached; {hours(total)} of compute, "
                 f"about {hours(wall)} of wall time on {where} (docs/budgets.md: estimate error)")
    slow = sorted((r for r in compute if compute[r] > 0), key=compute.get, reverse=True)
    return "\n".join(lines), wall, [f"{r} {hours(compute[r])}" for r in slow]


def check_cap(wall: float, max_hours: float | None, slow: list[str]) -> None:
    if max_hours is not None and wall > max_hours * 3600:
        raise PlanError(f"error: the estimated wall time {hours(wall)} exceeds max_hours={max_hours:g} "
                        f"(slowest rows: {', '.join(slow[:3])}); nothing was run: {WAYS_OUT}")


def device_of(params: dict) -> tuple[int, str]:
    from diffrl.resources import uses_gpu
    gpu = uses_gpu(params)
    return gpu, "a CUDA GPU" if gpu else ""


# --------------------------------------------------------------------------- Snakemake
def snakemake_jobs(dag, rules: set[str]) -> list[Job]:
    """The jobs of Snakemake's DAG that run a pipeline stage (not the `all` target)."""
    needrun = set(dag.needrun_jobs())
    graph = [j for j in dag.jobs if j.rule.name in rules]
    index = {j: i for i, j in enumerate(graph)}
    return [Job(j.rule.name, dict(j.wildcards.items()), j not in needrun,
                [index[d] for d in dag.job_dependencies(j) if d in index]) for j in graph]


def on_snakemake_start(workflow, params: dict, overrides: list[str]) -> None:
    """The Snakefile's `onstart`: print the plan; stop (before any job) when it exceeds the cap."""
    from diffrl.pipeline import STAGES
    dag = workflow.dag
    jobs = snakemake_jobs(dag, set(STAGES))
    gpu, name = device_of(params)
    cores = workflow.resource_settings.cores or 1
    slots = getattr(workflow.global_resources.get("gpu_slots"), "value", None)  # a Resource in Snakemake 9
    workers = min(cores, int(slots)) if gpu and slots else cores  # GPU jobs at once: --resources gpu_slots=N
    if gpu:  # jobs sharing one GPU are assumed not to slow each other (gpu_check.sh measures how far that holds)
        name = f"{name}, {workers} job(s) sharing it"
    estimate(jobs, params, gpu)
    table, wall, slow = report(jobs, params, workers, name or f"{cores} CPU core(s)", gpu)
    print(table, file=sys.stderr, flush=True)
    default_target = not dag.targetfiles and {r.name for r in dag.targetrules} <= {"all"}
    explicit_cap = any(o.split("=", 1)[0] == "max_hours" for o in overrides)
    check_cap(wall, params["max_hours"] if default_target or explicit_cap else None, slow)
    if os.environ.get(PLAN_ONLY_ENV):
        raise SystemExit(0)


# --------------------------------------------------------------------------- DVC
def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def dvc_name(stage: str, wildcards: dict) -> str:
    """A job's name in dvc.yaml/dvc.lock: STAGE_ROW@AXIS-VALUES (offline_train_dtql@halfcheetah-0)."""
    from diffrl import dag
    axes = "-".join(str(wildcards[a]) for a in dag.STAGES[stage].axes)
    return dag.stage_name(stage, dag.row_wildcards(stage, wildcards)) + (f"@{axes}" if axes else "")


def _lookup(raw: dict, path: list[str]):
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def dvc_jobs(params: dict, params_file: str | Path = "params.yaml", lock_file: str | Path = "dvc.lock") -> list[Job]:
    """The default target's jobs, cached when dvc.lock records them with the current values of the
    params they read and the current hashes of their code, their outputs exist, and no job they read
    from runs. Both files are read as DVC reads them (YAML 1.2: `5e-05` is a number)."""
    from ruamel.yaml import YAML

    from diffrl import dag
    load = YAML(typ="safe", pure=True).load
    raw = load(Path(params_file).read_text()) or {}
    lock_file = Path(lock_file)
    lock = (load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.exists() else {}
    raw_budget = (raw.get("budgets") or {}).get(params["budget"]) or {}
    listed = dag.jobs(params)
    producer = {o: i for i, (stage, w) in enumerate(listed) for o in dag.outputs(stage, **w)}
    jobs = []
    for stage, w in listed:
        row = dag.row_wildcards(stage, w)
        entry = lock.get(dvc_name(stage, w))
        ok = entry is not None and all(Path(o).exists() for o in dag.outputs(stage, **w))
        if ok:
            recorded = {k: v for values in (entry.get("params") or {}).values() for k, v in values.items()}
            for key in dag.dvc_params(stage, **row):
                key = key.replace("${budget}", params["budget"])
                if key not in recorded:
                    continue
                value = _lookup(raw, key.split(".")) if not key.startswith("budgets.") else \
                    raw_budget.get(key.rsplit(".", 1)[1], recorded[key])
                ok &= value == recorded[key]
            code = {d["path"]: d.get("md5") for d in entry.get("deps") or [] if not d["path"].startswith(("data/", "runs/"))}
            ok &= all(Path(p).is_file() and _md5(Path(p)) == h for p, h in code.items())
        deps = [producer[d] for d in dag.data_deps(stage, params, **w) if d in producer]
        jobs.append(Job(stage, dict(w), ok, deps))
    for j in jobs:  # topological order (dag.jobs lists producers first): a job after one that runs runs too
        j.cached &= all(jobs[d].cached for d in j.deps)
    return jobs


def dvc_plan(params_file: str = "params.yaml") -> int:
    """The dvc.yaml `plan` stage: print the plan of `dvc repro` / `dvc exp run` and enforce max_hours."""
    from diffrl import config
    params = config.load(params_file)
    gpu, name = device_of(params)
    jobs = dvc_jobs(params, params_file)
    estimate(jobs, params, gpu)
    table, wall, slow = report(jobs, params, 1, (name or "one CPU core") + ", one stage at a time (DVC)", gpu)
    print(table, flush=True)
    check_cap(wall, params["max_hours"], slow)
    return 0


def main(argv: list[str]) -> int:
    """`python -m diffrl.plan [TARGET...] [--config K=V...] [--cores N]`: Snakemake's plan, nothing run;
    `python -m diffrl.plan --dvc`: the plan of the DVC graph (the `plan` stage of dvc.yaml)."""
    if argv[:1] == ["--dvc"]:
        return dvc_plan()
    if "--cores" not in argv and "-c" not in argv:
        argv = [*argv, "--cores", str(os.cpu_count() or 1)]
    cmd = ["snakemake", *argv, "--quiet", "all"]
    return subprocess.run(cmd, env={**os.environ, PLAN_ONLY_ENV: "1"}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
