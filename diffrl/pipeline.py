"""The stage record: every stage of the graph declared once, with where its outputs live.

Each entry of STAGES is one `Stage`: its command, its matrix axes, the wildcard naming the section
it trains or evaluates, the params.yaml keys and budget keys it reads, the outputs of other jobs
it reads, its own outputs, whether it uses the GPU and how its cost is estimated. Everything else
derives from it: the Snakemake rules (workflow/rules/stages.smk makes one rule per entry), dvc.yaml
and each job's code dependencies (diffrl.dag), the cluster requests (diffrl.resources), the cost
plan (diffrl.plan). What an algorithm needs beyond its section (budget keys its agent reads, its
steps in the bandit study, a one-off setup cost) is declared in its registry entry
(diffrl.algos.REGISTRY), never here. docs/extending.md, "Adding a stage", shows how to add one.

Snakemake passes exactly the declared values through `params:`, dvc.yaml lists them under the
stage's `params:`, and diffrl.config.StageParams refuses a read of anything else. Stage entry points
import this module, so it holds declarations and paths only (the registry is imported inside
functions, and only the registry): the code dependencies and dvc.yaml are computed in diffrl.dag,
the costs in diffrl.resources, which no stage imports.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

RUN_KEYS = ("device", "deterministic", "compile", "tf32")  # how a job runs, read by every job that trains or acts


# --------------------------------------------------------------------------- paths
def agent_dir(env: str) -> str:
    """The SAC data agent of an environment, which its generated datasets are drawn from."""
    return f"data/{env}/agent"


def dataset_dir(task: str) -> str:
    return f"data/{task}/dataset"


def toy_file(name: str) -> str:
    return f"data/toy/{name}.npz"


def run_dir(task: str, algo: str, seed) -> str:
    return f"runs/{task}/{algo}/seed{seed}"


def eval_file(task: str, algo: str, seed) -> str:
    return f"runs/{task}/eval/{algo}/seed{seed}.json"


def bandit_file(name: str, algo: str) -> str:
    return f"runs/bandit/{name}/{algo}.npz"


def bandit_plot_file(name: str) -> str:
    return f"results/bandit_{name}.png"


BANDIT_SUMMARY = "results/bandit_summary.csv"


def log_file(stage: str, *parts) -> str:
    return "logs/" + "/".join([stage, *map(str, parts)]) + ".log"


def resume_file(section: str, where: str, seed) -> str:
    """Resume checkpoints live outside the stage outputs, so a failed job's progress survives
    (`where`: the job's task, or the environment of a data agent)."""
    return f"runs/.resume/{where}/{section}/seed{seed}.pt"


# a summary's outputs, for one scope (a task, an environment's tasks, or `suite`: every task)
SUMMARY_OUTPUTS = ("summary.csv", "summary.md", "metrics.json", "table.csv", "table.md", "table.tex",
                   "profile.png", "curves.csv", "curves.png", "online_curves.png", "intervals.png",
                   "plots")   # plots: a folder, one mean curve per row (`dvc plots show`)


def summary_files(scope: str) -> list[str]:
    return [f"results/{scope}_{name}" for name in SUMMARY_OUTPUTS]


def row_curve_file(scope: str, row: str) -> str:
    """A row's learning curve, mean over seeds (and tasks), in the summary's `plots` folder."""
    return f"results/{scope}_plots/{row}.csv"


def axis_values(params: dict, source: str) -> list:
    """The values of a matrix axis: a params.yaml list, or one derived from `tasks` (AXIS_SOURCES)."""
    if source in AXIS_SOURCES:
        return AXIS_SOURCES[source](params["tasks"])
    return list(params[source])


def _summary_scopes(tasks) -> list[str]:
    return [*tasks, "suite"]


def _agent_envs(tasks) -> list[str]:
    from diffrl.tasks import agent_envs
    return agent_envs(tasks)


# axes whose values derive from `tasks`: the tasks, the environments with a data agent, the summaries
AXIS_SOURCES: dict[str, Callable] = {"tasks": list, "agent_envs": _agent_envs, "scopes": _summary_scopes}


# --------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class Job:
    """What a stage's `inputs` function is given: one job's wildcards (for dvc.yaml, `${item.AXIS}`
    for its matrix axes), the section its row wildcard names ('' for none) and the validated params."""
    w: dict
    section: str
    params: dict
    folders: bool = False            # for DVC, which cannot expand a params.yaml list inside a stage's deps
    init: str | None = None          # the offline run an online row starts from (None: its params value)

    def offline_init(self) -> str:
        return offline_init_of(self.params, self.section) if self.init is None else self.init


def _no_inputs(job: Job) -> list[str]:
    return []


def _runs_trained(row: str, offline_init: str) -> list[str]:
    """The section a job trains and the pretrained parts it starts from."""
    from diffrl.algos import PRETRAINED
    return [row, *PRETRAINED.get(row, ())]


@dataclass(frozen=True)
class Stage:
    """One stage of the graph (a Snakemake rule, a dvc.yaml stage per row)."""
    command: str                     # shell command; its {fields} are the job's wildcards
    outputs: tuple[str, ...]         # path templates over the wildcards; a path without a suffix is a folder
    # matrix axis -> the params.yaml list its values come from (DVC's `matrix:`; Snakemake's wildcards)
    axes: dict[str, str] = field(default_factory=dict)
    row: str = ""                    # the wildcard naming the section it trains or evaluates ('' = none)
    sections: str = ""               # the registry tuple (diffrl.algos) of the values `row` takes
    # which rows the default target builds: "trained" (the sections the selected rows train or start
    # from), "selected" (the rows `algorithms` selects), "all" (every value of `sections`)
    builds: str = ""
    # params.yaml keys it reads (a section name: the whole section). Templates over its row:
    # {section} its params section (diffrl.algos.section_of), {pretrained} the critic and behaviour
    # sections it starts from, {top_keys} the top-level keys its registry entry reads (tfg_lambda),
    # {tilt} a tilted row's own section (nothing for the other rows). `budget` (the preset's name) is
    # read only by the stages that record it in their run's train.json.
    keys: tuple[str, ...] = ()
    # keys of the selected budget preset it reads: a tuple, or a function of its row's section
    budget: tuple[str, ...] | Callable[[str], list[str]] = ()
    inputs: Callable[[Job], list[str]] = _no_inputs   # the outputs of other jobs it reads
    # the sections whose algorithm modules a job of its row runs (its code dependencies: diffrl.dag), a
    # function of its row and the offline run that row starts from ('' for none)
    runs: Callable[[str, str], list[str]] = _runs_trained
    gpu: bool = False                # trains or acts: asks for a GPU when the run uses CUDA
    torch: bool = True               # runs torch (its thread count is set first); False: never imports it
    group: str = ""                  # job group in the SLURM profile (workflow/profiles/slurm, checked by a test)
    cached: bool = True              # DVC caches its outputs (False: small result files kept in git)
    target: int = 0                  # its place in the default target (rule `all`); 0: built only as an input
    plan_row: str = ""               # the cost plan's row for its jobs ('' = its row's section, else the stage)
    # estimated compute seconds of one job: a number, or a function of (diffrl.resources.Cost, its
    # row's section) that reads the selected budget and the registry's step times
    cost: float | Callable[..., float] = 30.0
    data_mb: Callable[..., float] | None = None  # host memory for its data, a function of the Cost

    def __post_init__(self):
        fields = {f for _, f, _, _ in string.Formatter().parse(self.command) if f}
        if fields - set(self.axes) - {self.row}:
            raise ValueError(f"stage command {self.command!r}: fields {sorted(fields)} must be its axes or its row")
        if bool(self.row) != bool(self.sections) or bool(self.row) != bool(self.builds):
            raise ValueError(f"stage {self.command!r}: a row wildcard comes with its `sections` and `builds`")
        if self.builds not in ("", "trained", "selected", "all"):
            raise ValueError(f"stage {self.command!r}: builds {self.builds!r}")


def offline_init_of(params: dict, row: str) -> str:
    """The offline row an online row starts from ('' for none); `params` is validated."""
    from diffrl.algos import section_of
    return getattr(params[section_of(row)], "offline_init", "")


def _train_budget(section: str) -> list[str]:
    """A training run reads its steps, the curve settings when it is a row (evaluated along the way;
    pretraining-only runs are not), and the budget keys its agent takes (its registry entry)."""
    from diffrl.algos import REGISTRY, ROWS
    keys = [steps_key(section)]
    keys += ["eval_every", "curve_episodes"] if section in ROWS else []
    return keys + list(dict.fromkeys(REGISTRY[section].budget_args.values()))


def _bandit_budget(row: str) -> list[str]:
    """A bandit run trains the row and the parts it starts from, each for its toy steps."""
    from diffrl.algos import PRETRAINED, REGISTRY
    sections = (*PRETRAINED.get(row, ()), row)
    keys = ["toy_samples", *dict.fromkeys(toy_steps_key(s) for s in sections)]
    return keys + list(dict.fromkeys(k for s in sections for k in REGISTRY[s].budget_args.values()))


def _dataset_inputs(job: Job) -> list[str]:
    """The data agent of the task's environment (none for random data or a Minari id). DVC, whose
    matrix cannot derive the environment from the task, depends on every data agent: a rerun whose
    dataset comes out the same leaves what reads it cached."""
    from diffrl.tasks import agent_envs, parse
    if job.folders:
        return [agent_dir(env) for env in agent_envs(job.params["tasks"])]
    task = parse(job.w["task"])
    return [agent_dir(task.env)] if task.needs_agent else []


def _train_inputs(job: Job) -> list[str]:
    from diffrl.algos import PRETRAINED
    w = job.w
    return [dataset_dir(w["task"]), *(run_dir(w["task"], part, w["seed"]) for part in PRETRAINED.get(job.section, ()))]


def _online_inputs(job: Job) -> list[str]:
    init = job.offline_init()
    return [run_dir(job.w["task"], init, job.w["seed"])] if init else []


def _evaluate_inputs(job: Job) -> list[str]:
    from diffrl.algos import evaluated_runs
    return [run_dir(job.w["task"], r, job.w["seed"]) for r in evaluated_runs(job.section)]


def _runs_online(row: str, offline_init: str) -> list[str]:
    """An online row's section, and an offline-to-online row's offline run with its pretrained parts."""
    from diffrl.algos import PRETRAINED, section_of
    return [section_of(row), *([offline_init, *PRETRAINED.get(offline_init, ())] if offline_init else [])]


def _runs_evaluated(row: str, offline_init: str) -> list[str]:
    """An evaluated row and the runs it loads (a tilted row: its base row's and its critic row's), each
    with its pretrained parts; the run is saved under the row's name (the online `sac` row as a `sac` agent)."""
    from diffrl.algos import PRETRAINED, evaluated_runs
    return list(dict.fromkeys([row, *(s for r in evaluated_runs(row) for s in (r, *PRETRAINED.get(r, ())))]))


def _summary_inputs(job: Job) -> list[str]:
    """The evaluations of the tasks a summary covers (DVC, whose matrix cannot derive them from the
    scope: those of every task, whose folders it lists)."""
    from diffrl.tasks import in_scope
    algos = job.params["algorithms"]
    if job.folders:
        return [str(Path(eval_file(t, a, 0)).parent) for t in job.params["tasks"] for a in algos]
    tasks = in_scope(job.w["scope"], job.params["tasks"])
    return [eval_file(t, a, s) for t in tasks for a in algos for s in job.params["seeds"]]


def _bandit_plot_inputs(job: Job) -> list[str]:
    from diffrl.algos import OFFLINE
    return [bandit_file(job.w["name"], a) for a in OFFLINE]


def _bandit_summary_inputs(job: Job) -> list[str]:
    from diffrl.algos import OFFLINE
    if job.folders:
        return ["runs/bandit"]
    return [bandit_file(n, a) for n in job.params["bandit_sets"] for a in OFFLINE]


_TASK_SEED = {"task": "tasks", "seed": "seeds"}
_TRAINED = dict(axes=_TASK_SEED, builds="trained", budget=_train_budget, inputs=_train_inputs, gpu=True, group="gpu",
                cost=lambda c, section: c.train(section), data_mb=lambda c: c.dataset_mb())

# in pipeline order: dvc.yaml lists the stages so, and each stage's jobs come after those they read
STAGES: dict[str, Stage] = {
    # each environment's SAC data agent (its medium and expert policies, its training episodes up to
    # the medium point), which every generated dataset of that environment is drawn from
    "data_agent": Stage("python stages/dataset.py data_agent --env {env}", (agent_dir("{env}"),),
                        {"env": "agent_envs"}, keys=(*RUN_KEYS, "dataset", "sac"),
                        budget=("sac_steps", "sac_warmup", "sac_eval_every"), gpu=True,
                        cost=lambda c, section: c.data_agent(), data_mb=lambda c: c.dataset_mb(sac=True)),
    # each task's offline dataset: generated from its environment's data agent (or random), or fetched from Minari
    "dataset": Stage("python stages/dataset.py dataset --task {task}", (dataset_dir("{task}"),), {"task": "tasks"},
                     keys=(*RUN_KEYS, "dataset"), budget=("dataset_episodes",), inputs=_dataset_inputs,
                     cost=lambda c, section: c.dataset(), data_mb=lambda c: c.dataset_mb()),
    # the 2-D toy bandit datasets
    "toy_dataset": Stage("python stages/toy_dataset.py --name {name}", (toy_file("{name}"),), {"name": "toy_sets"},
                         budget=("toy_samples",), target=2, plan_row="bandit study", cost=5.0, torch=False),
    # critic pretraining (IQL losses) and behaviour pretraining of the rows that start from them
    "critic_pretrain": Stage("python stages/train.py critic_pretrain --critic {critic} --task {task} --seed {seed}",
                             (run_dir("{task}", "{critic}", "{seed}"),), row="critic", sections="CRITICS",
                             keys=(*RUN_KEYS, "budget", "{section}"), **_TRAINED),
    "behavior_pretrain": Stage("python stages/train.py behavior_pretrain --behavior {behavior} --task {task} "
                               "--seed {seed}", (run_dir("{task}", "{behavior}", "{seed}"),), row="behavior",
                               sections="BEHAVIORS", keys=(*RUN_KEYS, "budget", "{section}"), **_TRAINED),
    # every offline row, on the dataset (and on the pretraining runs it starts from)
    "offline_train": Stage("python stages/train.py offline_train --algo {algo} --task {task} --seed {seed}",
                           (run_dir("{task}", "{algo}", "{seed}"),), row="algo", sections="OFFLINE",
                           keys=(*RUN_KEYS, "budget", "{section}"), **_TRAINED),
    # every online row, in the environment; an offline-to-online row starts from its offline_init run
    "online_train": Stage("python stages/online.py --algo {algo} --task {task} --seed {seed}",
                          (run_dir("{task}", "{algo}", "{seed}"),), _TASK_SEED, row="algo", sections="ONLINE",
                          builds="trained", keys=(*RUN_KEYS, "budget", "{section}", "{top_keys}"),
                          budget=("online_steps", "online_warmup", "online_eval_every", "curve_episodes",
                                  "max_episode_steps"),
                          inputs=_online_inputs, runs=_runs_online, gpu=True, group="gpu",
                          cost=lambda c, section: c.online(section)),
    # the final evaluation of every selected row (a tilted row: its base row's run under its tilt)
    "evaluate": Stage("python stages/evaluate.py --task {task} --algo {algo} --seed {seed}",
                      (eval_file("{task}", "{algo}", "{seed}"),), _TASK_SEED, row="algo", sections="ROWS",
                      builds="selected", keys=(*RUN_KEYS, "{tilt}"),
                      budget=("eval_episodes", "curve_episodes", "max_episode_steps"),
                      inputs=_evaluate_inputs, runs=_runs_evaluated, gpu=True, group="gpu",
                      cost=lambda c, section: c.evaluate(section)),
    # the multi-seed statistics, tables and figures of each task and of the suite of tasks (an
    # environment's tasks on request: results/hopper_summary.csv)
    "summary": Stage("python stages/summary.py --scope {scope}", tuple(summary_files("{scope}")),
                     {"scope": "scopes"}, keys=("seeds", "algorithms", "tasks", "stats"), budget=("below_regime",),
                     inputs=_summary_inputs, torch=False, cached=False, target=1),
    # the 2-D bandit study: every offline row (its pretraining in the same job) on each toy set, all seeds
    "bandit_train": Stage("python stages/bandit.py bandit_train --name {name} --algo {algo}",
                          (bandit_file("{name}", "{algo}"),), {"name": "bandit_sets"}, row="algo",
                          sections="OFFLINE", builds="all",
                          keys=(*RUN_KEYS, "seeds", "{pretrained}", "{section}"), budget=_bandit_budget, gpu=True,
                          group="gpu", plan_row="bandit study", cost=lambda c, section: c.bandit(section),
                          data_mb=lambda c: c.toy_mb()),
    "bandit_plot": Stage("python stages/bandit.py bandit_plot --name {name}", (bandit_plot_file("{name}"),),
                         {"name": "bandit_sets"}, keys=("seeds",), inputs=_bandit_plot_inputs, cached=False,
                         target=3, plan_row="bandit study", torch=False),
    "bandit_summary": Stage("python stages/bandit.py bandit_summary", (BANDIT_SUMMARY,),
                            keys=("seeds", "bandit_sets"), inputs=_bandit_summary_inputs, cached=False, target=4,
                            plan_row="bandit study", torch=False),
}


def stage_of(stage: str, /) -> Stage:
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}: add it to diffrl.pipeline.STAGES (known: {', '.join(STAGES)})")
    return STAGES[stage]


def section_wildcard(stage: str, wildcards: dict) -> str | None:
    """The value of a job's row wildcard (the section it trains or evaluates), None when absent."""
    row = stage_of(stage).row
    return wildcards.get(row) if row else None


def stage_keys(stage: str, /, **wildcards) -> list[str]:
    """The params.yaml keys one job reads (Stage.keys with its row's templates filled)."""
    from diffrl.algos import PRETRAINED, REGISTRY, TILTED, section_of
    row = section_wildcard(stage, wildcards)
    keys = []
    for k in stage_of(stage).keys:
        if k in ("{section}", "{top_keys}") and row is None:
            raise KeyError(f"stage {stage}: {k} needs its {stage_of(stage).row} wildcard")
        if k == "{section}":
            keys.append(section_of(row))
        elif k == "{top_keys}":
            keys += list(REGISTRY[section_of(row)].top_keys)
        elif k == "{pretrained}":
            keys += list(PRETRAINED.get(row, ()))
        elif k == "{tilt}":
            keys += [row] if row in TILTED else []
        else:
            keys.append(k)
    return keys


def steps_key(section: str) -> str:
    """The budget key of a section's gradient steps (its registry entry's `steps_key`)."""
    from diffrl.algos import REGISTRY
    key = REGISTRY[section].steps_key if section in REGISTRY else ""
    if not key:
        raise KeyError(f"steps_key: {section!r} is not an offline section")
    return key


def budget_steps(section: str, budget) -> int:
    """Gradient steps of a section's run at the selected budget: the preset's value of
    steps_key(section)."""
    return getattr(budget, steps_key(section))


def toy_steps_key(section: str) -> str:
    """The budget key of a section's steps in the 2-D bandit study (its registry entry's
    `toy_steps_key`: toy_steps unless the section keeps its own step count)."""
    from diffrl.algos import REGISTRY
    return REGISTRY[section].toy_steps_key


def budget_keys(stage: str, /, **wildcards) -> list[str]:
    """The keys of the selected budget preset (budgets[budget]) one job reads (Stage.budget).

    Only these values are declared (Snakemake's params, dvc.yaml's `budgets.${budget}.KEY`), so
    changing another key, or any key of an unselected preset, reruns nothing.
    """
    budget = stage_of(stage).budget
    if callable(budget):
        return budget(wildcards[stage_of(stage).row])
    return list(budget)


def declared_values(stage: str, /, validated: dict, raw: dict, **wildcards) -> str:
    """The values one job reads, as canonical JSON (Snakemake reruns a job when this changes): the
    params.yaml value of each declared key, and of the selected budget preset only the resolved
    values of the keys the job reads: another preset, or an unread key of this one, reruns nothing
    (the preset's name counts only for the stages that declare `budget`)."""
    keys = stage_keys(stage, **wildcards)
    # the task list by name: what a task changes is declared by its own jobs (below), so editing one
    # task's entry reruns that task's jobs only
    out = {key: (sorted(raw.get(key) or {}) if key == "tasks" else raw.get(key)) for key in keys}
    if "task" in wildcards:
        from diffrl.tasks import parse
        changes = (raw.get("tasks") or {}).get(parse(wildcards["task"]).name) or {}
        out["tasks[task]"] = {k: v for k, v in changes.items() if k in keys}
    preset = validated["budgets"][validated["budget"]]
    budget = {key: getattr(preset, key) for key in budget_keys(stage, **wildcards)}
    if budget:
        out["budgets[budget]"] = budget
    return json.dumps(out, sort_keys=True, default=str)
