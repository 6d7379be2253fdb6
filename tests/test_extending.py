"""docs/extending.md is the recipe for a new algorithm (its module, one registry entry, one params
section, the regenerate command) and for a new stage (its script, one stage record). These tests
apply the recipes' code blocks and run their commands, as written in the doc, in a copy of the
project and check that both front ends build the new jobs and that they run."""
import json
import re
import shlex
import shutil
import sys

import pytest
import yaml

from conftest import ROOT, run

ROW = "mlp_bc"


STAGE = "dataset_stats"


def _blocks() -> dict[str, str]:
    """The doc's code blocks of the algorithm: the module, the registry entry, the params section."""
    text = (ROOT / "docs/extending.md").read_text().split("## Adding a stage")[0]
    python = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    yml = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    bash = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    module = next(b for b in python if b.startswith(f"# diffrl/algos/{ROW}.py"))
    entry = next(b for b in python if b.lstrip().startswith(f'"{ROW}": Section('))
    return {"module": module, "entry": entry, "params": yml[0], "commands": bash[0]}


def _add_the_algorithm(project) -> None:
    blocks = _blocks()
    (project / f"diffrl/algos/{ROW}.py").write_text(blocks["module"])
    registry = project / "diffrl/algos/__init__.py"
    text = registry.read_text()
    anchor = "    # online rows"  # the entry goes after the offline rows
    assert text.count(anchor) == 1
    registry.write_text(text.replace(anchor, blocks["entry"] + anchor))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(yaml.safe_load(blocks["params"]))
    params["algorithms"] = ["bc", ROW]  # "add the row to `algorithms:`" (only bc beside it, to keep the graph small)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _run_the_commands(project, commands: str) -> dict[str, str]:
    """The doc's commands, in order, as written; returns each one's output."""
    outputs = {}
    for line in commands.strip().splitlines():
        argv = shlex.split(line)
        argv = [sys.executable, *argv[1:]] if argv[0] == "python" else argv
        outputs[line] = run(argv, project).stdout
    return outputs


def _job_counts(dry_run: str) -> dict[str, int]:
    table = dry_run.split("Job stats:")[1].split("Reasons:")[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


@pytest.mark.pipeline
def test_an_algorithm_added_as_docs_extending_md_says_joins_both_graphs_and_runs(project):
    _add_the_algorithm(project)
    seeds = len(yaml.safe_load((project / "params.yaml").read_text())["seeds"])
    outputs = _run_the_commands(project, _blocks()["commands"])
    regenerated, shown, dry_run = outputs.values()
    assert regenerated.startswith("regenerated: dvc.yaml, workflow/schemas/params.schema.json, docs/params.md")
    assert shown.splitlines()[:2] == [f"{ROW}:", "  lr: 0.001"]
    assert f"## `{ROW}`" in (project / "docs/params.md").read_text()

    # Snakemake: its training and evaluation per seed and its bandit runs, next to bc's
    counts = _job_counts(dry_run)
    assert counts["offline_train"] == 2 * seeds and counts["evaluate"] == 2 * seeds, counts
    assert "critic_pretrain" not in counts and "behavior_pretrain" not in counts
    out = run(["snakemake", "-n", "results/bandit_summary.csv"], project)
    assert re.search(rf"wildcards: name=\w+, algo={ROW}\b", out.stdout)

    # DVC: dvc.yaml generated from the same registry has its stages, with its code and budget key
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    train = dvc[f"offline_train_{ROW}"]
    assert f"diffrl/algos/{ROW}.py" in train["deps"] and "diffrl/algos/dql.py" not in train["deps"]
    assert {ROW, "budgets.${budget}.offline_steps"} <= {p for p in train["params"] if isinstance(p, str)}
    assert f"evaluate_{ROW}" in dvc and f"bandit_train_{ROW}" in dvc

    # its stages run: trained on the locally generated test dataset, evaluated, and on a toy set
    shutil.copytree(ROOT / "tests/data/halfcheetah_medium_small", project / "data/halfcheetah-medium/dataset")
    smoke = ["--set", "budget=smoke", "--set", "device=cpu"]
    run([sys.executable, "stages/train.py", "offline_train", "--algo", ROW, "--task", "halfcheetah-medium",
         "--seed", "0", *smoke], project)
    run([sys.executable, "stages/evaluate.py", "--task", "halfcheetah-medium", "--algo", ROW, "--seed", "0", *smoke],
        project)
    result = json.loads((project / f"runs/halfcheetah-medium/eval/{ROW}/seed0.json").read_text())
    assert result["algorithm"] == ROW and result["grad_steps"] == 100 and len(result["episode_returns"]) == 1
    run([sys.executable, "stages/toy_dataset.py", "--name", "8gaussians", *smoke], project)
    run([sys.executable, "stages/bandit.py", "bandit_train", "--name", "8gaussians", "--algo", ROW, *smoke], project)
    assert (project / f"runs/bandit/8gaussians/{ROW}.npz").stat().st_size > 0

    # the step benchmark builds it through the registry, as the doc says
    line = json.loads(run([sys.executable, "benchmarks/bench_steps.py", "--one", ROW, "cpu", "1", "--steps", "2"],
                          project).stdout.strip().splitlines()[-1])
    assert line["algo"] == ROW and line["ms_per_step"] > 0


def _stage_blocks() -> dict[str, str]:
    """The doc's code blocks of the stage: the script, the record, the commands."""
    text = (ROOT / "docs/extending.md").read_text().split("## Adding a stage")[1]
    python = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    bash = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    script = next(b for b in python if b.startswith(f"# stages/{STAGE}.py"))
    record = next(b for b in python if b.lstrip().startswith(f'"{STAGE}": Stage('))
    return {"script": script, "record": record, "commands": bash[0]}


@pytest.mark.pipeline
def test_a_stage_added_as_docs_extending_md_says_joins_both_graphs_and_runs(project):
    blocks = _stage_blocks()
    (project / f"stages/{STAGE}.py").write_text(blocks["script"])
    pipeline = project / "diffrl/pipeline.py"
    text = pipeline.read_text()
    anchor = "    # the 2-D toy bandit datasets\n"  # "after the stages whose outputs it reads": after `dataset`
    assert text.count(anchor) == 1
    pipeline.write_text(text.replace(anchor, blocks["record"] + anchor))
    regenerated, dry_run = _run_the_commands(project, blocks["commands"]).values()
    assert regenerated.startswith("regenerated: dvc.yaml")

    # Snakemake: one job per task in the default target, after the dataset it reads
    tasks = yaml.safe_load((project / "params.yaml").read_text())["tasks"]
    assert _job_counts(dry_run)[STAGE] == len(tasks)
    assert f"rule {STAGE}:" in dry_run and "results/halfcheetah-medium_dataset_stats.json" in dry_run

    # DVC: its stage, a matrix over tasks, its script and the dataset as deps, its result kept in git
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())["stages"][STAGE]
    assert dvc["matrix"] == {"task": "${tasks}"} and dvc["cmd"] == f"python stages/{STAGE}.py --task ${{item.task}}"
    assert dvc["deps"][0] == f"stages/{STAGE}.py" and "data/${item.task}/dataset" in dvc["deps"]
    assert dvc["outs"] == [{"results/${item.task}_dataset_stats.json": {"cache": False}}]

    # it runs, on the locally generated test dataset
    shutil.copytree(ROOT / "tests/data/halfcheetah_medium_small", project / "data/halfcheetah-medium/dataset")
    run([sys.executable, f"stages/{STAGE}.py", "--task", "halfcheetah-medium"], project)
    stats = json.loads((project / "results/halfcheetah-medium_dataset_stats.json").read_text())
    assert stats["transitions"] > 0 and stats["episodes"] > 0
    assert (project / f"logs/{STAGE}/halfcheetah-medium.log").exists()
