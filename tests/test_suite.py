"""diffrl.suite: the aggregate metrics and intervals equal rliable's own functions called directly with
the same seeding, the paper table marks the best per row, the writers format it, bad input fails in
one line naming the row."""
import io

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from rliable import library as rly
from rliable import metrics

from diffrl import suite

TASKS = ["halfcheetah-medium", "hopper-medium", "walker2d-medium", "antmaze_umaze"]
# 3 rows x 3 seeds x 4 tasks; on hopper-medium dql and eg_ood tie (mean 93.0 both, seeds in another order)
SCORES = {
    "bc": np.array([[42.0, 55.0, 70.0, 30.0], [44.5, 53.0, 72.0, 28.0], [43.0, 57.5, 69.0, 33.0]]),
    "dql": np.array([[51.0, 90.0, 87.5, 60.0], [50.0, 95.0, 85.0, 58.0], [52.5, 94.0, 88.0, 62.0]]),
    "eg_ood": np.array([[49.0, 94.0, 86.5, 103.0], [53.0, 90.0, 84.0, 59.0], [48.0, 95.0, 90.5, 61.0]]),
}
REPS, CONF, SEED = 300, 0.9, 7
POI_REPS = 100   # rliable's side: scipy's mannwhitneyu per task and resample, about 0.5 ms each
ONE = {
    "iqm": metrics.aggregate_iqm, "median": metrics.aggregate_median, "mean": metrics.aggregate_mean,
    "optimality_gap": lambda x: metrics.aggregate_optimality_gap(x, gamma=100),
}


def rliable_direct(x, func, seed=SEED):
    """rliable's get_interval_estimates on one array, one metric, as its README calls it, with numpy's
    global RNG seeded (what its StratifiedBootstrap draws from)."""
    np.random.seed(seed)
    point, ci = rly.get_interval_estimates({"x": x}, lambda a: np.array([func(a)]), reps=REPS,
                                           confidence_interval_size=CONF)
    return point["x"][0], ci["x"][:, 0]


def test_aggregate_equals_rliable_called_directly_and_is_deterministic():
    state = np.random.get_state()
    frame = suite.aggregate(SCORES, REPS, CONF, seed=SEED)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(state[1:], after[1:]))   # the caller's RNG is untouched
    assert list(frame.columns) == suite.AGGREGATE_COLUMNS and list(frame["algorithm"]) == list(SCORES)
    assert (frame["tasks"] == 4).all() and (frame["seeds"] == 3).all()
    for name, x in SCORES.items():
        line = frame.set_index("algorithm").loc[name]
        for m, func in ONE.items():
            point, ci = rliable_direct(x, func)
            assert line[m] == point == func(x), (name, m)
            np.testing.assert_array_equal([line[f"{m}_ci_low"], line[f"{m}_ci_high"]], ci, err_msg=f"{name} {m}")
            assert ci[0] < ci[1], (name, m)   # a real interval, not a degenerate one
        # the definitions, stated independently of rliable
        assert line["optimality_gap"] == pytest.approx(np.mean(np.maximum(0, 100 - x)), abs=1e-12)
        assert line["median"] == pytest.approx(np.median(x.mean(axis=0)), abs=1e-12)
        assert line["iqm"] == pytest.approx(scipy.stats.trim_mean(x.ravel(), 0.25), abs=1e-12)
    pd.testing.assert_frame_equal(frame, suite.aggregate(SCORES, REPS, CONF, seed=SEED))
    # a row's interval does not depend on the other rows or their order
    alone = suite.aggregate({"dql": SCORES["dql"]}, REPS, CONF, seed=SEED)
    pd.testing.assert_frame_equal(alone.reset_index(drop=True), frame.iloc[[1]].reset_index(drop=True))
    assert not suite.aggregate(SCORES, REPS, CONF, seed=SEED + 1)["iqm_ci_low"].equals(frame["iqm_ci_low"])


def test_aggregate_equals_rliable_on_other_shapes_and_ties():
    """The metrics computed for all resamples at once equal rliable's, bit for bit, for seed and task
    counts where the IQM's cut and the median's middle fall differently, and with tied scores."""
    rng = np.random.default_rng(11)
    for shape in [(5, 9), (7, 1), (2, 2), (10, 4)]:
        x = np.round(rng.normal(60, 40, shape), -1)
        line = suite.aggregate({"x": x}, REPS, CONF, seed=SEED).iloc[0]
        for m, func in ONE.items():
            point, ci = rliable_direct(x, func)
            assert line[m] == point and [line[f"{m}_ci_low"], line[f"{m}_ci_high"]] == list(ci), (shape, m)


def test_rliable_ignores_random_state_so_the_global_seed_is_what_counts():
    """Why suite seeds numpy's global RNG: rliable's resampling indices come from np.random.choice, and
    the random_state it hands arch is not used by the percentile method."""
    f = lambda a: np.array([metrics.aggregate_mean(a)])

    def ci(global_seed, state_seed):
        np.random.seed(global_seed)
        with pytest.warns(FutureWarning):   # arch deprecates the RandomState rliable hands it
            return rly.get_interval_estimates({"x": SCORES["bc"]}, f, reps=REPS,
                                              random_state=np.random.RandomState(state_seed))[1]["x"]
    np.testing.assert_array_equal(ci(1, 5), ci(1, 6))
    assert not np.array_equal(ci(1, 5), ci(2, 5))


def test_improvement_equals_rliable_probability_of_improvement():
    frame = suite.improvement(SCORES, "bc", POI_REPS, CONF, seed=SEED)
    assert list(frame.columns) == suite.IMPROVEMENT_COLUMNS
    assert list(frame["algorithm"]) == ["dql", "eg_ood"] and (frame["baseline"] == "bc").all()
    for line in frame.itertuples():
        x, y = SCORES[line.algorithm], SCORES["bc"]
        np.random.seed(SEED)
        point, ci = rly.get_interval_estimates({"p": (x, y)}, metrics.probability_of_improvement, reps=POI_REPS,
                                               confidence_interval_size=CONF)
        assert line.probability == point["p"] == metrics.probability_of_improvement(x, y)
        np.testing.assert_array_equal([line.ci_low, line.ci_high], ci["p"][:, 0])
    # dql beats bc on every seed pair of every task
    assert frame.set_index("algorithm").loc["dql", "probability"] == 1.0
    # eg_ood against dql: a real estimate strictly between 0 and 1 with a non-degenerate interval
    vs = suite.improvement(SCORES, "dql", POI_REPS, CONF, seed=SEED).set_index("algorithm").loc["eg_ood"]
    assert 0 < vs["probability"] < 1 and vs["ci_low"] < vs["ci_high"]
    # ties (scores on a coarse grid, and a row equal to the baseline) count half, as scipy's ranks do
    rng = np.random.default_rng(3)
    tied = {"y": np.round(rng.normal(50, 20, (5, 4)), -1), "x": np.round(rng.normal(55, 20, (5, 4)), -1)}
    tied["same"] = tied["y"].copy()
    for line in suite.improvement(tied, "y", POI_REPS, CONF, seed=SEED).itertuples():
        np.random.seed(SEED)
        point, ci = rly.get_interval_estimates({"p": (tied[line.algorithm], tied["y"])},
                                               metrics.probability_of_improvement, reps=POI_REPS,
                                               confidence_interval_size=CONF)
        assert line.probability == point["p"] and [line.ci_low, line.ci_high] == list(ci["p"][:, 0])


def test_score_profile_equals_rliable_performance_profile():
    """The profiles and bands the figure draws are rliable's create_performance_profile, bit for bit."""
    tau = suite.default_tau(SCORES)
    profiles, cis = suite.score_profile(SCORES, tau, REPS, CONF, seed=SEED)
    np.random.seed(SEED)
    want, want_cis = rly.create_performance_profile(SCORES, tau, reps=REPS, confidence_interval_size=CONF)
    assert list(profiles) == list(want)
    for name in want:
        np.testing.assert_array_equal(profiles[name], want[name])
        np.testing.assert_array_equal(cis[name], want_cis[name])


def test_paper_table_marks_the_best_and_the_writers_format_it():
    agg = suite.aggregate(SCORES, REPS, CONF, seed=SEED)
    table = suite.paper_table(SCORES, TASKS, agg)
    labels = TASKS + ["IQM", "Median", "Mean", "Optimality gap (lower is better)"]
    assert list(dict.fromkeys(table["row"])) == labels and len(table) == len(labels) * 3
    best = {r: sorted(g.loc[g["best"], "algorithm"]) for r, g in table.groupby("row", sort=False)}
    assert best["halfcheetah-medium"] == ["dql"] and best["walker2d-medium"] == ["eg_ood"]
    assert best["hopper-medium"] == ["dql", "eg_ood"]                  # the tie: both
    assert best["antmaze_umaze"] == ["eg_ood"]
    gaps = agg.set_index("algorithm")["optimality_gap"]
    assert best["Optimality gap (lower is better)"] == [gaps.idxmin()] and gaps.idxmin() != gaps.idxmax()
    cell = table.set_index(["row", "algorithm"]).loc[("halfcheetah-medium", "bc")]
    x = SCORES["bc"][:, 0]
    assert cell["value"] == x.mean() and cell["se"] == pytest.approx(x.std(ddof=1) / np.sqrt(3))
    assert cell["cell"] == f"{x.mean():.1f} \u00b1 {x.std(ddof=1) / np.sqrt(3):.1f}"

    md = suite.table_markdown(table, "## D4RL")
    lines = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]] for l in md.splitlines()
             if l.startswith("| ") and not l.startswith("| task")}
    bold = {r: [a for a, c in zip(SCORES, cells) if c.startswith("**") and c.endswith("**")]
            for r, cells in lines.items()}
    assert bold == {r: best[r] for r in labels}
    assert md.startswith("## D4RL\n") and "| task | bc | dql | eg_ood |" in md

    tex = suite.table_latex(table, "Normalised scores.")
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\begin{tabular}{lccc}" in tex
    assert "eg\\_ood" in tex and "antmaze\\_umaze" in tex and "eg_ood" not in tex
    hopper = next(l for l in tex.splitlines() if l.startswith("hopper-medium"))
    assert hopper.count("\\textbf{") == 2 and "$\\pm$" in hopper and "\u00b1" not in tex
    assert tex.count("\\textbf{") == sum(len(v) for v in best.values())

    back = pd.read_csv(io.StringIO(suite.table_csv(table)))
    assert back.shape == (len(labels) * 3, len(suite.TABLE_COLUMNS)) and list(back.columns) == suite.TABLE_COLUMNS
    np.testing.assert_allclose(back["value"], table["value"], rtol=1e-12)


def test_best_ties_survive_float_rounding_and_one_seed_has_zero_se():
    scores = {"a": np.array([[0.1], [0.2], [0.3]]), "b": np.array([[0.3], [0.2], [0.1]])}
    assert scores["a"].mean() != scores["b"].mean()   # summation order: they differ in the last bit
    table = suite.paper_table(scores, ["t"], suite.aggregate(scores, 20, 0.95))
    assert table.loc[table["row"] == "t", "best"].all()
    one = {"a": np.array([[50.0, 60.0]]), "b": np.array([[40.0, 70.0]])}
    agg = suite.aggregate(one, 20, 0.95)
    assert (agg["iqm_ci_low"] == agg["iqm"]).all() and (agg["iqm_ci_high"] == agg["iqm"]).all()
    table = suite.paper_table(one, ["t1", "t2"], agg)
    assert (table.loc[table["kind"] == "task", "se"] == 0).all()


def test_one_task_iqm_is_the_trimmed_mean_of_the_seeds():
    x = np.array([[10.0], [80.0], [30.0], [55.0], [95.0], [20.0], [61.0]])   # 7 seeds: one cut at each end
    frame = suite.aggregate({"a": x}, 200, 0.95)
    assert frame.loc[0, "iqm"] == scipy.stats.trim_mean(x.ravel(), 0.25) == np.mean([20, 30, 55, 61, 80])
    assert frame.loc[0, "median"] == frame.loc[0, "mean"] == x.mean()   # one task: its mean over seeds
    three = np.array([[10.0], [50.0], [90.0]])   # floor(0.25 * 3) = 0 runs cut: rliable's IQM is the mean
    assert suite.aggregate({"a": three}, 50, 0.95).loc[0, "iqm"] == 50.0


def test_plot_profile_writes_a_png(tmp_path):
    path = tmp_path / "profile.png"
    suite.plot_profile(SCORES, path, "D4RL suite", reps=50)
    data = path.read_bytes()
    assert len(data) > 5000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    tau = suite.default_tau(SCORES)
    assert len(tau) == 101 and tau[0] == 0 and tau[-1] == pytest.approx(1.05 * 103.0)


@pytest.mark.parametrize("scores, match", [
    ({"a": np.zeros((3, 4)), "b": np.zeros((3, 5))}, r"row 'b': shape \(3, 5\) differs from row 'a'"),
    ({"a": np.zeros((3, 4)), "b": np.array([[1.0, np.nan, 2.0, 3.0]] * 3)}, r"row 'b': non-finite score nan"),
    ({"a": np.zeros(4)}, r"row 'a': scores must be a non-empty 2-D array"),
])
def test_bad_input_fails_in_one_line_naming_the_row(scores, match):
    for call in (lambda: suite.aggregate(scores, 10, 0.95), lambda: suite.improvement(scores, "a", 10, 0.95),
                 lambda: suite.paper_table(scores, TASKS, pd.DataFrame({"algorithm": list(scores)}))):
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="task 'hopper-medium'"):
        suite.paper_table({"b": np.array([[1.0, np.nan, 2.0, 3.0]])}, TASKS, pd.DataFrame({"algorithm": ["b"]}))
    with pytest.raises(ValueError, match="baseline 'zz'"):
        suite.improvement({"a": np.zeros((2, 2))}, "zz", 10, 0.95)


def test_the_suite_summary_stage_equals_rliable_on_the_per_seed_scores(project):
    """stages/summary.py over a suite of 2 environments x 2 qualities: its aggregate IQM and intervals
    are rliable's own functions on the per-seed scores, and the papers' table has one line per task.
    The job imports neither torch nor scipy (about a second each in every summary job)."""
    import json
    import subprocess
    import sys

    import pandas as pd
    from rliable import library as rly
    from rliable import metrics

    tasks = ["halfcheetah-medium", "halfcheetah-medium-replay", "hopper-medium", "hopper-medium-replay"]
    rng = np.random.default_rng(3)
    scores = {a: rng.uniform(10, 90, (3, len(tasks))).round(3) for a in ("bc", "iql")}
    for a, x in scores.items():
        for s in range(3):
            for t, task in enumerate(tasks):
                path = project / f"runs/{task}/eval/{a}/seed{s}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({
                    "algorithm": a, "task": task, "seed": s, "final_score": float(x[s, t]), "final_return": 0.0,
                    "best_during_training_score": None, "curve": [{"step": 1, "score": float(x[s, t]), "return": 0.0}],
                    "grad_steps": 1, "env_steps": 0, "wall_s": 1.0, "online": False, "step_unit": "grad",
                    "reference_scores": {"source": "dataset"}, "run_info": {"budget": "smoke", "dataset": task}}))
    sets = ["seeds=[0, 1, 2]", "algorithms=[bc, iql]", f"tasks={{{', '.join(t + ': {}' for t in tasks)}}}",
            "stats.bootstrap_reps=200"]
    out = subprocess.run([sys.executable, "-X", "importtime", "stages/summary.py", "--scope", "suite",
                          *[a for s in sets for a in ("--set", s)]], cwd=project, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "numpy" in imported and not imported & {"torch", "scipy", "seaborn"}, imported & {"torch", "scipy", "seaborn"}
    table = pd.read_csv(project / "results/suite_summary.csv").set_index("algorithm")
    for a, x in scores.items():
        with suite.seeded(0):
            point, ci = rly.get_interval_estimates({a: x}, lambda v: np.array([metrics.aggregate_iqm(v)]), reps=200,
                                                   confidence_interval_size=0.95)
        assert table.loc[a, "score_iqm"] == pytest.approx(point[a][0], abs=1e-4)
        assert (table.loc[a, "iqm_ci_low"], table.loc[a, "iqm_ci_high"]) == pytest.approx(tuple(ci[a][:, 0]), abs=1e-4)
        assert table.loc[a, "n_tasks"] == 4 and table.loc[a, "n_seeds"] == 3
    paper = (project / "results/suite_table.md").read_text()
    assert all(f"| {t} |" in paper for t in tasks) and "| IQM |" in paper
    assert (project / "results/suite_profile.png").stat().st_size > 0
