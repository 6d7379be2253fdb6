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


def run(cmd, cwd, timeout=900, check=True):
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


def test_smoke_graph_incremental_reruns_and_dvc(project):
    # 1. the whole smoke graph (all targets) on 2 cores
    run(["snakemake", "--cores", "2", "--config", "budget=smoke"], project)
    table = pd.read_csv(project / "results/halfcheetah_summary.csv")
    assert list(table.columns) == COLUMNS
    assert set(table["algorithm"]) >= {"bc", "iql"}
    assert (table["n_seeds"] == 3).all()
    assert table[["score_mean", "score_iqm", "return_mean", "wall_s"]].notna().all().all()
    assert (table["grad_steps"] > 0).all()
    for name in ("summary.md", "metrics.json", "curves.csv", "curves.png", "intervals.png"):
        assert (project / f"results/halfcheetah_{name}").stat().st_size > 0
    assert (project / "logs/critic_pretrain/halfcheetah/seed0.log").read_text().strip()

    # 2. nothing to do after a full run; one changed hyperparameter reruns only its stages
    out = run(["snakemake", "-n", "--config", "budget=smoke"], project)
    assert "Nothing to be done" in out.stdout + out.stderr
    out = run(["snakemake", "-n", "--config", "budget=smoke", "iql={expectile: 0.8}"], project)
    counts = job_counts(out.stdout)
    assert counts.get("critic_pretrain") == 3 and counts.get("summary") == 1, counts
    assert "dataset" not in counts and "behavior_pretrain" not in counts, counts
    n_iql = len(re.findall(r"wildcards: env=halfcheetah, algo=iql", out.stdout))
    assert counts.get("evaluate") == 3 == n_iql, out.stdout[-3000:]

    # 3. bad input: one clear line, exit non-zero, nothing computed is lost
    before = sorted(p.name for p in (project / "runs/halfcheetah/iql").iterdir())
    bad = run(["snakemake", "-n", "--config", "iql={expectle: 0.8}"], project, check=False)
    assert bad.returncode != 0 and "did you mean 'iql.expectile'" in bad.stdout + bad.stderr
    assert sorted(p.name for p in (project / "runs/halfcheetah/iql").iterdir()) == before

    # 4. DVC adopts the same outputs, then `dvc exp run -S` reruns only what reads the key
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["budget"] = "smoke"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "commit", "-f", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke outputs"], project)
    status = run(["dvc", "status"], project)
    assert "up to date" in status.stdout, status.stdout
    exp = run(["dvc", "exp", "run", "-S", "iql.expectile=0.8"], project)
    log = exp.stdout + exp.stderr
    assert re.search(r"Running stage 'critic_pretrain@halfcheetah-0'", log), log[-3000:]
    assert not re.search(r"Running stage 'dataset@", log) and not re.search(r"Running stage 'behavior_pretrain@", log)
    shown = run(["dvc", "exp", "show", "--json"], project)
    assert "halfcheetah_metrics.json" in shown.stdout and "score_mean" in shown.stdout
