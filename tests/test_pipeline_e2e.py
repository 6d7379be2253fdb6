"""End to end on a fresh copy: the smoke graph builds the summary table, a changed
hyperparameter reruns only what reads it (Snakemake and DVC), bad input fails fast, and the
Snakemake report holds every result with its caption."""
import json
import re

import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config

from diffrl.stats import COLUMNS

from conftest import run

pytestmark = pytest.mark.pipeline



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


# The smoke graph with fewer steps and one seed, merged over params.yaml: .test/config.yaml says why
TEST_CONFIG = ["--configfile", ".test/config.yaml"]
# the online variants (.test/config.yaml narrows their nets to 32 units and 2 particles)
ONLINE = ["sdac", "dpmd", "dpmd_tilt", "dpmd_select", "dpmd_fixnorm", "dpmd_model", "dpmd_plan"]
ROWS = ["bc", "iql", "dql", "qg", "edp", "eg_ood", "dtql", "eda", "sac", *ONLINE, "dpmd_o2o"]
TASK = "halfcheetah-medium"  # params.yaml's one task; the default target summarises it and the suite


def test_smoke_graph_incremental_reruns_and_dvc(project):
    # 1. the whole graph (all targets) on 2 cores, its cost plan printed before the first job
    out = run(["snakemake", "--cores", "2", *TEST_CONFIG], project)
    first_job = re.search(r"^(local)?rule \w+:", out.stderr, re.M)
    assert "cost plan: budget `smoke`" in out.stderr[:first_job.start()], out.stderr[:3000]
    # the environment's data agent, then the task's dataset drawn from it
    assert json.loads((project / "data/halfcheetah/agent/info.json").read_text())["env"] == "halfcheetah"
    assert json.loads((project / f"data/{TASK}/dataset/info.json").read_text())["task"] == TASK
    table = pd.read_csv(project / f"results/{TASK}_summary.csv")
    assert list(table.columns) == COLUMNS
    assert list(table["algorithm"]) == ROWS
    assert (table["n_seeds"] == 1).all() and (table["n_tasks"] == 1).all()
    assert table[["score_mean", "score_iqm", "return_mean", "wall_s"]].notna().all().all()
    assert (table["grad_steps"] > 0).all()
    rows = table.set_index("algorithm")
    # Diffusion-QL rows also report the checkpoint of offline model selection (here the only one: the final)
    assert (rows.loc[["dql", "qg", "edp", "eg_ood"], "selected_mean"] == rows.loc[["dql", "qg", "edp", "eg_ood"], "score_mean"]).all()
    assert rows.loc[["bc", "iql", "dtql", "eda", "sac"], "selected_mean"].isna().all()
    online = rows.loc[["sac", *ONLINE, "dpmd_o2o"]]
    assert (online["env_steps"] == 265).all() and (online["grad_steps"] > 0).all()
    for scope in (TASK, "suite"):
        for name in ("summary.md", "metrics.json", "table.csv", "table.md", "table.tex", "profile.png", "curves.csv",
                     "curves.png", "online_curves.png", "intervals.png"):
            assert (project / f"results/{scope}_{name}").stat().st_size > 0, (scope, name)
    suite = pd.read_csv(project / "results/suite_summary.csv")
    assert list(suite["algorithm"]) == ROWS and (suite["n_tasks"] == 1).all()
    # one mean curve per row for `dvc plots show`, a few numbers per row for `dvc exp show`
    assert sorted(p.stem for p in (project / f"results/{TASK}_plots").glob("*.csv")) == sorted(ROWS)
    curve = pd.read_csv(project / f"results/{TASK}_plots/dpmd.csv")
    assert list(curve.columns) == ["step", "score", "half", "seeds"] and curve["step"].iloc[-1] == 265
    metrics = json.loads((project / f"results/{TASK}_metrics.json").read_text())
    assert sorted(metrics) == sorted(ROWS)
    assert all(set(m) == {"iqm", "ci_low", "ci_high", "mean", "optimality_gap"} for m in metrics.values())
    assert metrics["bc"]["iqm"] == pytest.approx(rows.loc["bc", "score_iqm"], abs=1e-4)
    assert "capped at 20 steps" in (project / f"results/{TASK}_summary.md").read_text()
    assert (project / f"logs/offline_train/{TASK}/iql/seed0.log").read_text().strip()
    assert (project / "logs/data_agent/halfcheetah.log").read_text().strip()

    # 2. nothing to do after a full run; one changed hyperparameter reruns only its stages
    out = run(["snakemake", "-n", *TEST_CONFIG], project)
    assert "Nothing to be done" in out.stdout + out.stderr
    out = run(["snakemake", "-n", *TEST_CONFIG, "--config", "iql={expectile: 0.8}"], project)
    counts = job_counts(out.stdout)
    # the IQL seeds, their evaluations, the tables (the task's and the suite's), and IQL's bandit runs with
    # what reads them
    assert counts == {"offline_train": 1, "evaluate": 1, "summary": 2, "bandit_train": 1, "bandit_plot": 1,
                      "bandit_summary": 1, "all": 1, "total": 8}, counts
    assert len(re.findall(rf"wildcards: task={TASK}, algo=iql, seed=", out.stdout)) == 2  # train, evaluate
    # tfg_lambda reruns exactly the guided variants (dpmd_tilt, dpmd_model), their evaluations and the tables
    out = run(["snakemake", "-n", *TEST_CONFIG, "--config", "tfg_lambda=64"], project)
    assert job_counts(out.stdout) == {"online_train": 2, "evaluate": 2, "summary": 2, "all": 1, "total": 7}, out.stdout
    assert set(re.findall(rf"wildcards: task={TASK}, algo=(\w+), seed=\d", out.stdout)) == {"dpmd_tilt", "dpmd_model"}
    # the tilted rows: evaluated from the cached base runs (no training), each next to its base row
    tilted = ["bc", "dql", "dtql", "eda", "bc_tilt", "dql_tilt", "dtql_tilt", "eda_tilt"]
    out = run(["snakemake", "--cores", "2", f"results/{TASK}_summary.csv", *TEST_CONFIG, "--config",
               f"algorithms=[{', '.join(tilted)}]"], project)
    assert job_counts(out.stderr) == {"evaluate": 4, "summary": 1, "total": 5}, out.stderr[-3000:]
    assert set(re.findall(rf"wildcards: task={TASK}, algo=(\w+), seed=0", out.stderr)) == set(tilted[4:])
    table = pd.read_csv(project / f"results/{TASK}_summary.csv").set_index("algorithm")
    assert list(table.index) == ["bc", "bc_tilt", "dql", "dql_tilt", "dtql", "dtql_tilt", "eda", "eda_tilt"]
    assert list(table.loc[tilted[4:], "base_row"]) == tilted[:4] and table.loc[tilted[4:], "poi_vs_base"].notna().all()
    run(["snakemake", "--cores", "2", f"results/{TASK}_summary.csv", *TEST_CONFIG], project)  # the full table again

    # a suite of 2 environments x 2 qualities: one data agent per environment, one dataset per task, and
    # the suite's table with a line per task (the cached halfcheetah-medium runs are reused; before DVC,
    # whose `exp run` rewrites the checkout and so every code input's mtime)
    tasks = ["halfcheetah-medium", "halfcheetah-medium-replay", "hopper-medium", "hopper-medium-replay"]
    suite = ["--config", "algorithms=[bc, iql]", f"tasks={{{', '.join(t + ': {}' for t in tasks)}}}"]
    out = run(["snakemake", "--cores", "2", "results/suite_summary.csv", *TEST_CONFIG, *suite], project)
    counts = job_counts(out.stderr)
    assert counts["data_agent"] == 1 and counts["dataset"] == 3 and counts["summary"] == 1, counts  # hopper's, 3 new
    table = pd.read_csv(project / "results/suite_summary.csv").set_index("algorithm")
    assert list(table.index) == ["bc", "iql"] and (table["n_tasks"] == 4).all()
    paper = (project / "results/suite_table.md").read_text()
    assert all(f"| {t} |" in paper for t in tasks) and "data: halfcheetah-medium:" in paper
    replay = json.loads((project / "data/hopper-medium-replay/dataset/info.json").read_text())
    assert replay["quality"] == "medium-replay" and replay["episodes"] >= 1

    bandit = pd.read_csv(project / "results/bandit_summary.csv")
    assert set(bandit["algorithm"]) == set(ROWS[:8]) and len(bandit) == 1 * 8 * 1
    assert (project / "results/bandit_8gaussians.png").stat().st_size > 0

    # 3. bad input: one clear line, exit non-zero, nothing computed is lost
    before = sorted(p.name for p in (project / f"runs/{TASK}/iql").iterdir())
    bad = run(["snakemake", "-n", "--config", "iql={expectle: 0.8}"], project, check=False)
    assert bad.returncode != 0 and "did you mean 'iql.expectile'" in bad.stdout + bad.stderr
    assert sorted(p.name for p in (project / f"runs/{TASK}/iql").iterdir()) == before

    # 4. DVC adopts the same outputs, then `dvc exp run -S` reruns only what reads the key
    # (params.yaml with .test/config.yaml merged in as Snakemake merged it)
    params = yaml.safe_load((project / "params.yaml").read_text())
    update_config(params, yaml.safe_load((project / ".test/config.yaml").read_text()))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "commit", "-f", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke outputs"], project)
    status = run(["dvc", "status"], project)
    assert "up to date" in status.stdout, status.stdout
    exp = run(["dvc", "exp", "run", "-S", "tfg_lambda=64"], project)
    log = exp.stdout + exp.stderr
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    # the guided online variants and their evaluations, the tables (dvc.yaml has one stage per row, named
    # STAGE_ROW, each a matrix over task and seed or toy set; a section's key, such as iql.expectile, is
    # checked against `dvc status` in tests/test_pipeline_graph.py)
    expected = {f"online_train_{a}@{TASK}-0" for a in ("dpmd_tilt", "dpmd_model")}
    expected |= {f"evaluate_{a}@{TASK}-0" for a in ("dpmd_tilt", "dpmd_model")}
    expected |= {f"summary@{TASK}", "summary@suite", "plan"}
    assert ran == expected, (sorted(ran ^ expected), log[-3000:])
    assert log.index("Running stage 'plan'") == log.index("Running stage '") and "cost plan:" in log  # first
    shown = run(["dvc", "exp", "show", "--json"], project)
    assert f"{TASK}_metrics.json" in shown.stdout and "suite_metrics.json" in shown.stdout and '"iqm"' in shown.stdout
    # dvc.yaml's plots, of the suite: one line per row (offline rows against gradient steps, online against
    # env steps)
    plots = run(["dvc", "plots", "show", "--json"], project).stdout
    assert "suite offline rows" in plots and "suite online rows" in plots
    assert all(f'"filename": "{r}.csv"' in plots for r in ROWS)  # a line per row file
    # over max_hours, the plan stage fails first and DVC runs nothing else
    capped = run(["dvc", "exp", "run", "-S", "max_hours=0.0001", "-S", "++iql.expectile=0.8"], project, check=False)
    assert capped.returncode != 0 and "exceeds max_hours=0.0001" in capped.stdout + capped.stderr
    assert set(re.findall(r"Running stage '([^']+)'", capped.stdout + capped.stderr)) == {"plan"}
    run(["git", "checkout", "params.yaml"], project)

    # 5. the Snakemake report of the finished graph
    check_report(project, TEST_CONFIG)


# what each result's caption says first (workflow/report/*.rst), by report category (a summary scope:
# the task, and the suite under its own name) and subcategory
def _scope_results(scope):
    return {
        # (the papers' table: its caption's apostrophe is left to the HTML)
        "1 table and profile": {f"results/{scope}_table.md": "The papers",
                                f"results/{scope}_profile.png": f"Performance profile of {scope}"},
        "tables": {f"results/{scope}_summary.csv": f"Summary table of {scope}",
                   f"results/{scope}_summary.md": f"Markdown twin of {scope}_summary.csv"},
        "learning curves": {f"results/{scope}_curves.csv": "The points of both learning-curve figures",
                            f"results/{scope}_curves.png": f"Learning curves of the offline rows on {scope}",
                            f"results/{scope}_online_curves.png": f"Learning curves of the online rows on {scope}"},
        "final scores": {f"results/{scope}_intervals.png": f"Final scores on {scope}"},
    }


REPORT = {
    TASK: _scope_results(TASK),
    "all tasks (suite)": _scope_results("suite"),  # named to come first in the report's menu
    "bandit study": {
        "policy samples": {"results/bandit_8gaussians.png": "The 2-D bandit study on the toy set 8gaussians"},
        "table": {"results/bandit_summary.csv": "The 2-D bandit study, one line per toy set"},
    },
}


def check_report(project, config):
    """`snakemake --report report.html` with the run's config: one self-contained page holding every
    result (metrics.json aside) in its summary scope's category, each with its caption and the labels
    of the run (budget, seeds, steps as the jobs ran them), and the workflow description."""
    run(["snakemake", "--report", "report.html", *config], project)
    html = (project / "report.html").read_text()

    def variable(name):  # the report's data, as its page script declares it (snakemake 9.27)
        return json.loads(re.search(rf'^\s*var {name} = ({{.*}}|".*");$', html, re.M).group(1))

    def text(caption):
        return " ".join(re.sub(r"<[^>]+>", "", caption).split())
    results, categories = variable("results"), variable("categories")
    assert {c: {s: sorted(paths) for s, paths in subs.items()} for c, subs in categories.items()} == \
        {c: {s: sorted(items) for s, items in subs.items()} for c, subs in REPORT.items()}, categories
    assert sorted(categories, key=str.lower)[0] == "all tasks (suite)"  # the menu sorts them by name
    assert "diffusion-policy RL results" in variable("workflow_desc")
    for path, first_words in ((p, w) for subs in REPORT.values() for items in subs.values() for p, w in items.items()):
        result, caption = results[path], text(results[path]["caption"])
        assert caption.startswith(first_words), (path, caption)
        assert "Budget smoke:" in caption and "Data:" in caption, (path, caption)
        assert result["labels"]["budget"] == "smoke" and result["labels"]["seeds"] == "0", result["labels"]
        assert result["data_uri"].startswith("data:image/png" if path.endswith(".png") else "data:text/"), path
    summary = results[f"results/{TASK}_summary.csv"]["caption"]
    assert "offline rows 30 gradient steps" in text(summary) and "EDA: 1 alignment step" in text(summary)
    assert "online rows 265 environment steps" in text(summary) and f"generated {TASK}" in text(summary)
    assert '<th class="head">score_iqm</th>' in summary and "<td>dpmd_o2o</td>" in summary  # the table itself
    assert f"results/{TASK}_metrics.json" not in results and "results/suite_metrics.json" not in results
