"""End to end on a fresh copy: the smoke graph builds the summary table, a changed
hyperparameter reruns only what reads it (Snakemake and DVC), and bad input fails fast."""
import json
import re
import subprocess

import pandas as pd
import pytest
import yaml

from diffrl.stats import COLUMNS

pytestmark = pytest.mark.pipeline


def run(cmd, cwd, timeout=1800, check=True):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def job_counts(text):
    """Job stats table of a Snakemake dry run -> {rule: count}."""
    counts = {}
    block = text.split("Job stats:")[1] if "Job stats:" in text else ""
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


# The smoke graph with fewer steps and two seeds: this test checks the mechanics of the graph
# (every stage, caching, reruns, both front ends), the learning tests check the algorithms.
TINY = {"sac_steps": 1200, "sac_warmup": 1000, "sac_eval_every": 1200, "dataset_episodes": 3, "critic_steps": 40,
        "behavior_steps": 40, "energy_behavior_steps": 2, "offline_steps": 30, "align_steps": 1, "eval_every": 1000,
        "curve_episodes": 1, "eval_episodes": 1, "toy_samples": 500, "toy_steps": 20}
CONFIG = ["budget=smoke", "seeds=[0, 1]", "toy_sets=[8gaussians]", "bandit_sets=[8gaussians]",
          "budgets={smoke: {%s}}" % ", ".join(f"{k}: {v}" for k, v in TINY.items())]


def test_smoke_graph_incremental_reruns_and_dvc(project):
    # 1. the whole graph (all targets) on 2 cores
    run(["snakemake", "--cores", "2", "--config", *CONFIG], project)
    table = pd.read_csv(project / "results/halfcheetah_summary.csv")
    assert list(table.columns) == COLUMNS
    assert list(table["algorithm"]) == ["bc", "iql", "dql", "qg", "edp", "eg_ood", "dtql", "eda"]
    assert (table["n_seeds"] == 2).all()
    assert table[["score_mean", "score_iqm", "return_mean", "wall_s"]].notna().all().all()
    assert (table["grad_steps"] > 0).all()
    for name in ("summary.md", "metrics.json", "curves.csv", "curves.png", "intervals.png"):
        assert (project / f"results/halfcheetah_{name}").stat().st_size > 0
    assert (project / "logs/critic_pretrain/halfcheetah/iql/seed0.log").read_text().strip()

    # 2. nothing to do after a full run; one changed hyperparameter reruns only its stages
    out = run(["snakemake", "-n", "--config", *CONFIG], project)
    assert "Nothing to be done" in out.stdout + out.stderr
    out = run(["snakemake", "-n", "--config", *CONFIG, "iql={expectile: 0.8}"], project)
    counts = job_counts(out.stdout)
    # the IQL seeds, their evaluations, the table, and IQL's bandit runs with what reads them
    assert counts == {"critic_pretrain": 2, "evaluate": 2, "summary": 1, "bandit_train": 1, "bandit_plot": 1,
                      "bandit_summary": 1, "all": 1, "total": 9}, counts
    assert len(re.findall(r"wildcards: env=halfcheetah, critic=iql, seed=", out.stdout)) == 2
    assert len(re.findall(r"wildcards: env=halfcheetah, algo=iql, seed=", out.stdout)) == 2
    bandit = pd.read_csv(project / "results/bandit_summary.csv")
    assert set(bandit["algorithm"]) == set(table["algorithm"]) and len(bandit) == 1 * 8 * 2
    assert (project / "results/bandit_8gaussians.png").stat().st_size > 0

    # 3. bad input: one clear line, exit non-zero, nothing computed is lost
    before = sorted(p.name for p in (project / "runs/halfcheetah/iql").iterdir())
    bad = run(["snakemake", "-n", "--config", "iql={expectle: 0.8}"], project, check=False)
    assert bad.returncode != 0 and "did you mean 'iql.expectile'" in bad.stdout + bad.stderr
    assert sorted(p.name for p in (project / "runs/halfcheetah/iql").iterdir()) == before

    # 4. DVC adopts the same outputs, then `dvc exp run -S` reruns only what reads the key
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["budget"] = "smoke"
    params["seeds"] = [0, 1]
    params["toy_sets"] = params["bandit_sets"] = ["8gaussians"]
    params["budgets"]["smoke"].update(TINY)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "commit", "-f", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke outputs"], project)
    status = run(["dvc", "status"], project)
    assert "up to date" in status.stdout, status.stdout
    exp = run(["dvc", "exp", "run", "-S", "iql.expectile=0.8"], project)
    log = exp.stdout + exp.stderr
    assert re.search(r"Running stage 'critic_pretrain@halfcheetah-iql-0'", log), log[-3000:]
    assert not re.search(r"Running stage 'dataset@", log) and not re.search(r"Running stage 'behavior_pretrain@", log)
    assert not re.search(r"Running stage 'critic_pretrain@halfcheetah-dtql_critic", log)
    shown = run(["dvc", "exp", "show", "--json"], project)
    assert "halfcheetah_metrics.json" in shown.stdout and "score_mean" in shown.stdout
