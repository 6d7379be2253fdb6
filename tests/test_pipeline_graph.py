"""The job graph: dvc.yaml is generated from the declarations the Snakefile uses, and a change
reruns only what it affects (code: the modules a job imports; params: the values it reads)."""
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from diffrl import config, dag
from diffrl.algos import BEHAVIORS, CRITICS, OFFLINE, ONLINE, ROWS
from diffrl.pipeline import AXIS_SOURCES, STAGES, axis_values, declared_values, steps_key
from diffrl.plan import dvc_jobs, dvc_name

from conftest import ROOT, run

PARAMS = config.load(ROOT / "params.yaml")


def row_of(wildcards):
    return wildcards.get("algo") or wildcards.get("critic") or wildcards.get("behavior")


def job_stats(text):
    """The "Job stats" table of a Snakemake dry run -> {rule: count} (total left out)."""
    if "Job stats:" not in text:
        return {}
    counts = {}
    for line in text.split("Job stats:")[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts


def snakemake_dry_run(cwd, *args):
    out = subprocess.run(["snakemake", "-n", "--nolock", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    return out.stdout + out.stderr


# --------------------------------------------------------------------------- dvc.yaml
@pytest.mark.pipeline
def test_dvc_and_snakemake_build_the_same_jobs():
    """DVC's resolved stages are diffrl.dag's jobs (command, code deps, outputs, params), and
    Snakemake schedules as many jobs of each rule."""
    from dvc.repo import Repo
    jobs = dag.jobs(PARAMS)
    expected = {}
    for stage, w in jobs:
        row = dag.row_wildcards(stage, w)
        key = dvc_name(stage, w)
        init = dag.job_init(PARAMS, stage, row)
        expected[key] = {
            "w": w, "cmd": dag.command(stage, **w), "outs": sorted(dag.outputs(stage, **w)),
            "code": dag.code_deps(stage, offline_init=init, **w),
            "data": dag.data_deps(stage, PARAMS, folders=True, **w),
            "params": dag.dvc_params(stage, **row),
        }
    with Repo(str(ROOT)) as repo:
        stages = {st.name: st for st in repo.index.stages}
        assert set(stages) == set(expected) | {"plan"}
        # the cost plan runs before every other stage (DVC runs the first stage without deps on others first)
        assert [st.name for st in repo.index.stages][0] == "plan" and stages.pop("plan").cmd.endswith("--dvc")
        for name, st in stages.items():
            e = expected[name]
            w = e["w"]
            assert st.cmd == e["cmd"], name
            assert sorted(Path(o.def_path).as_posix() for o in st.outs) == e["outs"], name
            deps = [Path(d.def_path).as_posix() for d in st.deps if not hasattr(d, "params")]
            assert deps == e["code"] + e["data"], name
            params = sorted(p for d in st.deps if hasattr(d, "params") for p in d.params)
            resolved = (p.replace("${budget}", PARAMS["budget"]).replace("${item.task}", w.get("task", ""))
                        for p in e["params"])
            assert params == sorted(resolved), name
    stats = job_stats(snakemake_dry_run(ROOT, "--forceall"))
    assert stats.pop("all") == 1
    assert stats == dict(Counter(stage for stage, _ in jobs))


def test_dvc_builds_the_selected_rows_and_what_they_start_from():
    p = config.load(ROOT / "params.yaml", ["algorithms=[bc, dpmd_o2o]", "seeds=[0]"])
    families = dag.stage_rows(p)
    trained = {row_of(w) for s, w in families if STAGES[s].builds == "trained"}
    assert trained == {"bc", "dql", "dpmd_o2o"}  # dpmd_o2o starts from the dql run of its seed
    assert {w["algo"] for s, w in families if s == "evaluate"} == {"bc", "dpmd_o2o"}


# --------------------------------------------------------------------------- code dependencies
def test_code_deps_follow_the_imports_of_each_row():
    deps = {}
    for stage, w in dag.jobs(PARAMS):
        init = dag.job_init(PARAMS, stage, dag.row_wildcards(stage, w))
        deps[stage, row_of(w)] = set(dag.code_deps(stage, offline_init=init, **w))
    for files in deps.values():
        assert "diffrl/resources.py" not in files and "diffrl/dag.py" not in files
        assert "diffrl/pipeline.py" in files and "diffrl/algos/__init__.py" in files
    with_dpmd = {k for k, files in deps.items() if "diffrl/algos/dpmd.py" in files}
    # the sac row's config and agent live in sac.py: it neither trains nor evaluates with dpmd.py
    online = {r for r in ONLINE if r != "sac"}
    assert with_dpmd == {("online_train", r) for r in online} | {("evaluate", r) for r in online}
    assert {k for k, files in deps.items() if "diffrl/algos/eda.py" in files} == \
        {("behavior_pretrain", "eda_behavior"), ("offline_train", "eda"), ("evaluate", "eda"), ("bandit_train", "eda")}
    # the o2o row loads its offline run (dql): Diffusion-QL's code is its code too
    assert "diffrl/algos/dql.py" in deps["online_train", "dpmd_o2o"] and "diffrl/algos/dql.py" not in \
        deps["online_train", "dpmd"]
    assert deps["offline_train", "iql"] == deps["critic_pretrain", "dtql_critic"]  # the same script and IQL agent
    assert "diffrl/generate.py" in deps["dataset", None] and "diffrl/stats.py" in deps["summary", None]


def test_the_row_cut_drops_no_shared_module():
    """A dispatching stage loses only algorithm modules that one of its rows brings back: every
    algorithm module its script reaches statically is in the union of its rows' closures."""
    from diffrl.algos import REGISTRY
    algorithms = {dag.algorithm_file(s) for s in REGISTRY}
    rows = {"critic_pretrain": [{"critic": c} for c in CRITICS], "behavior_pretrain": [{"behavior": b} for b in BEHAVIORS],
            "offline_train": [{"algo": a} for a in OFFLINE], "online_train": [{"algo": a} for a in ONLINE],
            "evaluate": [{"algo": a} for a in ROWS], "bandit_train": [{"algo": a} for a in OFFLINE]}
    for stage, wildcards in rows.items():
        reached = dag.closure([ROOT / dag.entry_point(stage)]) & algorithms
        union = set().union(*(dag.code_deps(stage, **w) for w in wildcards))
        assert {dag.rel(f) for f in reached} <= union, stage


def test_a_job_imports_only_its_declared_code():
    """What a job imports at run time (params validation and its row's agent, through the lazy
    registry) is within its code deps: an offline_train dql job never loads dpmd, eda or dtql."""
    code = ("import sys; sys.path.insert(0, '.')\n"
            "from diffrl import config, offline\n"
            "from diffrl.algos import AGENTS, SECTIONS\n"
            "from diffrl.pipeline import stage_keys\n"
            "config.load('params.yaml', sections=stage_keys('offline_train', algo='dql'))\n"
            "AGENTS['dql'], SECTIONS['dql']\n"
            "print('\\n'.join(sorted(m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)"
            " and m.__name__.startswith('diffrl'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = {Path(f).resolve().relative_to(ROOT).as_posix() for f in out.stdout.split()}
    undeclared = loaded - set(dag.code_deps("offline_train", algo="dql"))
    assert not undeclared, undeclared
    assert "diffrl/algos/dql.py" in loaded and "diffrl/algos/dpmd.py" not in loaded


def test_a_stage_without_torch_imports_none_of_it(project):
    """A stage declared torch=False skips torch's second-long import: its job, run as the graph runs it
    (here on stand-in toy bandit runs), imports neither torch nor scipy. (The summary job's run, on a
    suite of tasks, is checked in tests/test_suite.py.)"""
    import numpy as np
    from diffrl.algos import OFFLINE
    from diffrl.data import toy_dataset
    # every stage declared torch=False but the summary, whose run on a suite of tasks tests/test_suite.py checks
    lean = [name for name, st in dag.STAGES.items() if not st.torch and name != "summary"]
    assert lean and all(set(dag.STAGES[name].axes) <= {"name"} for name in lean), lean
    data = toy_dataset("8gaussians", 200, seed=0)
    for algo in OFFLINE:  # what bandit_train writes: each seed's actions and the toy data
        path = project / f"runs/bandit/8gaussians/{algo}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, seed0=data["action"][:50], **{f"data_{k}": v for k, v in data.items()})
    sets = ["--set", "budget=smoke", "--set", "seeds=[0]", "--set", "bandit_sets=[8gaussians]"]
    for stage in lean:  # in pipeline order: the toy set before the bandit plot and table
        w = {axis: "8gaussians" for axis in dag.STAGES[stage].axes}
        cmd = dag.command(stage, **w).split()
        out = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:], *sets], cwd=project, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
        assert "numpy" in imported and not imported & {"torch", "scipy"}, (stage, imported & {"torch", "scipy"})
        assert all((project / o).exists() for o in dag.outputs(stage, **w)), stage


def _make_outputs(root: Path, params: dict, mtime: float | None = None) -> None:
    """Stand-in outputs of every job, all with one mtime (default: newer than the code)."""
    paths = []
    for stage, w in dag.jobs(params):
        for out in dag.outputs(stage, **w):
            p = root / out
            if p.suffix:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(out)
            else:
                p.mkdir(parents=True, exist_ok=True)
                (p / "stand_in").write_text(out)
                paths.append(p / "stand_in")
                if stage == "dataset":  # what a whole dataset has (diffrl.data.dataset_damage)
                    (p / "data").mkdir()
                    (p / "data/main_data.hdf5").write_text(out)
                    (p / "info.json").write_text("{}")
                    paths += [p / "data/main_data.hdf5", p / "data", p / "info.json"]
            paths.append(p)
    t = time.time() + 10 if mtime is None else mtime
    for p in paths:
        os.utime(p, (t, t))


@pytest.mark.pipeline
def test_snakemake_reruns_what_a_change_affects(project):
    """An up-to-date project (stand-in outputs, their params recorded by `snakemake --touch`):
    another preset's key reruns nothing, a key of the selected one only the jobs that read it, and
    editing dpmd.py only the SDAC/DPMD rows, their evaluations and the table."""
    target = "results/halfcheetah-medium_summary.csv"
    now = time.time()
    _make_outputs(project, PARAMS, mtime=now - 1000)
    for f in [*(project / "stages").glob("*.py"), *(project / "diffrl").rglob("*.py")]:
        os.utime(f, (now - 500, now - 500))  # newer than every output: --touch records every job
    run(["snakemake", "--cores", "1", "--touch", "--nolock", target], project)
    assert "Nothing to be done" in snakemake_dry_run(project, target)

    seeds = len(PARAMS["seeds"])
    out = snakemake_dry_run(project, target, "--config", "budgets={paper: {offline_steps: 7, sac_steps: 7}}")
    assert "Nothing to be done" in out, out[-3000:]
    out = snakemake_dry_run(project, target, "--config", "budgets={quick: {energy_behavior_steps: 7}}")
    assert job_stats(out) == {"behavior_pretrain": seeds, "offline_train": seeds, "evaluate": seeds, "summary": 1}
    assert set(re.findall(r"wildcards: task=halfcheetah-medium, (?:behavior|algo)=(\w+)", out)) == \
        {"eda_behavior", "eda"}

    with open(project / "diffrl/algos/dpmd.py", "a") as f:  # an edit (Snakemake ignores a bare touch)
        f.write("\n# an edit\n")
    out = snakemake_dry_run(project, target)
    n = (len(ONLINE) - 1) * seeds  # every online row but sac, whose config and agent live in sac.py
    assert job_stats(out) == {"online_train": n, "evaluate": n, "summary": 1}, out[-3000:]
    assert "algo=sac," not in out
    assert not re.search(r"rule (data_agent|dataset|critic_pretrain|behavior_pretrain|offline_train|bandit_\w+):", out)


@pytest.mark.pipeline
def test_dvc_status_lists_only_what_a_change_affects(project, monkeypatch):
    """With dvc.lock in place (stand-in outputs, `dvc commit`): editing dpmd.py changes the SDAC/DPMD
    rows and their evaluations only; editing budgets.paper changes nothing while budget is quick;
    budgets.quick.offline_steps changes the runs that train a final offline policy; iql.expectile
    changes the iql row's run and its bandit run. The cost plan's
    jobs to run (diffrl.plan.dvc_jobs) are exactly those `dvc status` lists."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(seeds=[0], algorithms=["bc", "iql", "dtql", "sac", "dpmd", "dpmd_o2o"], toy_sets=["8gaussians"],
                  bandit_sets=["8gaussians"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "diffrl.params", "--regenerate"], project)
    _make_outputs(project, config.load(project / "params.yaml"))
    run(["dvc", "commit", "-f", "-q"], project)

    def changed():
        """The jobs `dvc status` lists (the plan stage aside: it reruns whenever params.yaml or the code
        changed). The cost plan counts them as jobs to run, and besides them only jobs downstream of
        one (`dvc repro` reruns those when their inputs change; `dvc status` does not list them)."""
        status = set(json.loads(run(["dvc", "status", "--json"], project).stdout)) - {"plan"}
        jobs = dvc_jobs(config.load(project / "params.yaml"))
        names = [dvc_name(j.stage, j.wildcards) for j in jobs]
        planned = {n for n, j in zip(names, jobs) if not j.cached}
        assert status <= planned, sorted(status - planned)
        assert all(any(names[d] in planned for d in j.deps) for n, j in zip(names, jobs) if n in planned - status)
        return status

    monkeypatch.chdir(project)
    assert changed() == set()
    with open(project / "diffrl/algos/dpmd.py", "a") as f:
        f.write("\n# an edit\n")
    assert changed() == {"online_train_dpmd@halfcheetah-medium-0",
                         "online_train_dpmd_o2o@halfcheetah-medium-0", "evaluate_dpmd@halfcheetah-medium-0",
                         "evaluate_dpmd_o2o@halfcheetah-medium-0"}
    run(["dvc", "commit", "-f", "-q"], project)
    params["budgets"]["paper"]["offline_steps"] = 7
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed() == set()
    params["budgets"]["quick"]["offline_steps"] = 7
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # no data agent, dataset or pretraining job: the final policies of the selected offline rows whose
    # steps it sets (dql is dpmd_o2o's start)
    assert changed() == {f"offline_train_{a}@halfcheetah-medium-0" for a in ("bc", "iql", "dql", "dtql")
                         if steps_key(a) == "offline_steps"} != set()
    run(["dvc", "commit", "-f", "-q"], project)
    params["iql"]["expectile"] = 0.8  # one row's hyperparameter: its run and its bandit run
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed() == {"offline_train_iql@halfcheetah-medium-0", "bandit_train_iql@8gaussians"}


# --------------------------------------------------------------------------- params precision
def _declared(params_raw):
    validated = config.validate(params_raw)
    return {(stage, tuple(sorted(w.items()))): declared_values(stage, validated, params_raw, **w)
            for stage, w in dag.jobs(validated)}


def _changed_by(*overrides):
    raw = config.read_params(ROOT / "params.yaml")
    before, after = _declared(raw), _declared(config.apply_overrides(raw, overrides))
    return {job for job in before if before[job] != after[job]}


def test_offline_steps_changes_the_final_offline_policies_only():
    """EDA's alignment reads align_steps; pretraining runs, the dataset and the online rows read
    neither."""
    changed = _changed_by("budgets.quick.offline_steps=7")
    final_policies = {("offline_train", a) for a in OFFLINE if steps_key(a) == "offline_steps"}
    assert "eda" not in {a for _, a in final_policies} and {(s, row_of(dict(w))) for s, w in changed} == final_policies
    assert len(changed) == len(final_policies) * len(PARAMS["seeds"]) * len(PARAMS["tasks"])


def test_curve_settings_do_not_rerun_pretraining_only_runs():
    changed = {(s, row_of(dict(w))) for s, w in _changed_by("budgets.quick.eval_every=7")}
    assert ("offline_train", "iql") in changed and ("offline_train", "eda") in changed
    assert {s for s, _ in changed} == {"offline_train"}


def test_another_preset_changes_nothing():
    assert PARAMS["budget"] == "quick"
    for key in ("offline_steps", "toy_samples", "sac_steps", "eval_episodes", "online_steps", "below_regime"):
        value = "[dql]" if key == "below_regime" else "77"
        assert _changed_by(f"budgets.paper.{key}={value}") == set(), key
    # the selector alone is not a value a stage reads: a preset with the quick values reruns nothing
    raw = config.read_params(ROOT / "params.yaml")
    raw["budgets"]["paper"] = dict(raw["budgets"]["quick"])
    same = _declared(config.apply_overrides(raw, ["budget=paper"]))
    changed = {job for job, v in _declared(raw).items() if same[job] != v}
    # only the runs that record the preset's name in their train.json (pipeline.STAGES: `budget`)
    assert {s for s, _ in changed} == {"critic_pretrain", "behavior_pretrain", "offline_train", "online_train"}


def test_every_stage_is_one_rule_made_from_its_record():
    """The rules are generated from diffrl.pipeline.STAGES, one per stage: no rule is written by hand
    besides the default target, so a rule's params, inputs and command are its stage's."""
    text = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    text += (ROOT / "workflow" / "Snakefile").read_text()
    assert re.findall(r"^\s*rule (\w+):", text, flags=re.M) == ["all"]
    assert "for _stage in STAGES:" in text and "name: _stage" in text
    for directive in ("output: rule_outputs(_stage)", "input: inputs(_stage)", "declared=declared(_stage)",
                      "resources: **job_resources(_stage, P)", 'shell: "{params.cmd}{params.set}"'):
        assert directive in text, directive


@pytest.mark.pipeline
def test_hopper_and_walker2d_go_through_the_same_graph():
    """The tasks of every environment get the same jobs (data agent, dataset, pretraining, all rows,
    evaluation, table)."""
    counts = {}
    tasks = "tasks={hopper-medium: {}, walker2d-medium: {}}"  # added to params.yaml's halfcheetah-medium
    for env in ("halfcheetah", "hopper", "walker2d"):
        out = snakemake_dry_run(ROOT, "--forceall", f"results/{env}_summary.csv", "--config", tasks)
        counts[env] = job_stats(out)
        assert f"data/{env}/agent" in out and f"data/{env}-medium/dataset" in out
        assert f"runs/{env}-medium/eval/" in out and f"results/{env}_summary.csv" in out
        assert set(re.findall(r"wildcards: task=([\w-]+)", out)) == {f"{env}-medium"}, env
    assert counts["hopper"] == counts["walker2d"] == counts["halfcheetah"]
    assert counts["hopper"]["data_agent"] == counts["hopper"]["dataset"] == 1


THREE_TASKS = "tasks={halfcheetah-medium: {}, hopper-medium: {}, hopper-medium-replay: {}}"


@pytest.mark.pipeline
def test_one_data_agent_per_environment_and_one_dataset_per_task():
    """hopper-medium and hopper-medium-replay are drawn from one SAC run (hopper's data agent); each
    task has its own dataset and its own runs; any task's evaluation builds as one target."""
    out = snakemake_dry_run(ROOT, "--forceall", "--config", THREE_TASKS, "algorithms=[bc]", "seeds=[0]")
    stats = job_stats(out)
    assert stats["data_agent"] == 2 and stats["dataset"] == 3, stats
    assert stats["offline_train"] == stats["evaluate"] == 3, stats
    assert sorted(re.findall(r"wildcards: env=(\w+)\n", out)) == ["halfcheetah", "hopper"]
    for task in ("halfcheetah-medium", "hopper-medium", "hopper-medium-replay"):
        assert f"python stages/dataset.py dataset --task {task}\n" in out
        assert f"output: runs/{task}/bc/seed0\n" in out
    # one task's row, from nothing: its environment's data agent, its dataset, its run, its evaluation
    out = snakemake_dry_run(ROOT, "--forceall", "runs/hopper-medium-replay/eval/qg/seed0.json", "--config", THREE_TASKS)
    assert job_stats(out) == {"data_agent": 1, "dataset": 1, "offline_train": 1, "evaluate": 1}, out[-3000:]
    assert "output: data/hopper/agent\n" in out and "output: data/hopper-medium-replay/dataset\n" in out


@pytest.mark.pipeline
def test_a_task_change_reruns_only_that_tasks_jobs(project, monkeypatch):
    """`tasks.hopper-medium.dql.eta`: in Snakemake, hopper-medium's dql run, its evaluation and the
    tables (never the data agent, a dataset, another row or another task's runs); in DVC, which lists
    `tasks.TASK` as a param of every job of the task, hopper-medium's jobs only."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(tasks={"halfcheetah-medium": {}, "hopper-medium": {}, "hopper-medium-replay": {}}, seeds=[0],
                  algorithms=["bc", "dql"], toy_sets=["8gaussians"], bandit_sets=["8gaussians"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "diffrl.params", "--regenerate"], project)
    validated = config.load(project / "params.yaml")
    now = time.time()
    _make_outputs(project, validated, mtime=now - 1000)
    for f in [*(project / "stages").glob("*.py"), *(project / "diffrl").rglob("*.py")]:
        os.utime(f, (now - 500, now - 500))
    target = "results/suite_summary.csv"
    run(["snakemake", "--cores", "1", "--touch", "--nolock", target], project)
    run(["dvc", "commit", "-f", "-q"], project)
    assert "Nothing to be done" in snakemake_dry_run(project, target)

    # Snakemake: the job that reads dql on hopper-medium, and what reads its run
    out = snakemake_dry_run(project, target, "--config", "tasks={hopper-medium: {dql: {eta: 0.5}}}")
    assert job_stats(out) == {"offline_train": 1, "evaluate": 1, "summary": 1}, out[-3000:]
    assert set(re.findall(r"wildcards: task=([\w-]+), algo=(\w+)", out)) == {("hopper-medium", "dql")}

    # DVC: every job of hopper-medium (its dataset, its runs and evaluations), nothing of another task's
    # (the summaries follow once those evaluations change)
    monkeypatch.chdir(project)
    params["tasks"]["hopper-medium"] = {"dql": {"eta": 0.5}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = set(json.loads(run(["dvc", "status", "--json"], project).stdout)) - {"plan"}
    jobs = {dvc_name(stage, w): (stage, w) for stage, w in dag.jobs(validated)}
    of_task = {n for n, (_, w) in jobs.items() if w.get("task") == "hopper-medium"}
    assert of_task and status == of_task, sorted(status ^ of_task)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_a_command_axes_and_outputs(stage):
    import diffrl.algos
    st = STAGES[stage]
    assert dag.entry_point(stage).startswith("stages/") and (ROOT / dag.entry_point(stage)).is_file()
    assert set(dag.command_fields(stage)) <= set(st.axes) | {st.row} and st.outputs
    # each axis takes its values from a params.yaml list, or derives them from `tasks` (AXIS_SOURCES)
    assert set(st.axes.values()) <= set(PARAMS) | set(AXIS_SOURCES), st.axes
    for source in st.axes.values():
        assert axis_values(PARAMS, source), (stage, source)
    if st.row:
        assert st.row in dag.command_fields(stage) and isinstance(getattr(diffrl.algos, st.sections), tuple)


# --------------------------------------------------------------------------- the cost plan
def test_makespan_schedules_the_jobs_on_the_workers():
    """Three independent 10 s jobs and one 5 s job after the first: 35 s on one worker, 20 s on two
    (the third 10 s job beside the 5 s one), 15 s on eight (the 5 s job waits for its input)."""
    from diffrl.plan import Job, makespan
    jobs = [Job("offline_train", {}, False, [], 10.0), Job("offline_train", {}, False, [], 10.0),
            Job("offline_train", {}, False, [], 10.0), Job("evaluate", {}, False, [0], 5.0),
            Job("evaluate", {}, True, [], 99.0)]  # cached: costs nothing
    assert makespan(jobs, 1) == pytest.approx(35.0)
    assert makespan(jobs, 2) == pytest.approx(20.0)
    assert makespan(jobs, 8) == pytest.approx(15.0)


@pytest.mark.pipeline
def test_the_default_target_stops_before_any_job_when_the_plan_exceeds_max_hours(project):
    """At the quick budget with the online rows, the bare `snakemake` stops with the cost line (one
    line: the estimate, the cap, the slowest rows, the ways out) and creates nothing; an explicit
    target is not capped unless max_hours is given on the command line."""
    out = run(["snakemake", "--cores", "2"], project, check=False)
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()
    assert "cost plan: budget `quick`" in out.stderr and "dpmd_tilt" in err[-1]
    assert err[-1].startswith("error: the estimated wall time") and "max_hours=6" in err[-1] and "algorithms=" in err[-1]
    assert not (project / "runs").exists() and not (project / "data").exists()
    plan = [sys.executable, "-m", "diffrl.plan", "results/halfcheetah_summary.csv"]
    assert "total: " in run(plan, project).stderr  # the plan alone: printed, nothing run
    capped = run([*plan, "--config", "max_hours=1"], project, check=False)
    assert capped.returncode != 0 and "exceeds max_hours=1" in capped.stderr
    assert not (project / "runs").exists()
