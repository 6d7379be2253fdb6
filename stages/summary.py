"""Stage `summary`: multi-seed statistics of every row over one scope: a task, an environment's
tasks (`results/hopper_summary.csv`), or `suite`, every task of `tasks`.

    python stages/summary.py --scope suite        # results/suite_*
    python stages/summary.py --scope hopper-medium

Writes results/{scope}_summary.csv and .md (one line per row over the scope's tasks x seeds: the
aggregate IQM, median, mean and optimality gap with stratified-bootstrap CIs as rliable defines
them, diffrl.suite), results/{scope}_metrics.json (each row's IQM, its interval, mean and
optimality gap, for `dvc exp show`), the papers' table (tasks as rows, algorithms as columns, mean
+- se, the best per task marked, the aggregates below) as table.csv, table.md and table.tex, the
performance profile (profile.png), results/{scope}_curves.csv (every evaluation point of every run),
results/{scope}_plots/ROW.csv (each row's curve, mean over tasks and seeds, for `dvc plots show`), PNG
learning curves and IQM intervals. Every task is normalised with its own dataset's reference scores
(stages/evaluate.py). A tilted row is listed next to its base row, with its probability of
improvement over it. Every declared run must be there: a missing or failed seed stops the stage
with its name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import eval_file, log_file, row_curve_file, summary_files  # noqa: E402


def main(p, args):
    import json

    from diffrl import suite
    from diffrl.algos import TILT_BASES
    from diffrl.stats import (curves_frame, markdown, mean_curves, plot_curves, plot_intervals, score_matrix,
                              summarize, table_order)
    from diffrl.tasks import in_scope
    from diffrl.utils import atomic_path, write_json

    seeds, st, scope = p["seeds"], p["stats"], args.scope
    tasks = in_scope(scope, p["tasks"])
    bases = {a: TILT_BASES[a] for a in p["algorithms"] if a in TILT_BASES}
    algos = table_order(p["algorithms"], bases)
    files = {(t, a, s): eval_file(t, a, s) for t in tasks for a in algos for s in seeds}
    missing = [f for f in files.values() if not Path(f).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} declared run(s) have no evaluation, e.g. {missing[0]}: "
                                f"rerun `snakemake results/{scope}_summary.csv` (a failed seed is never "
                                f"summarised as if it had finished)")
    runs = {k: json.loads(Path(f).read_text()) for k, f in files.items()}
    results = list(runs.values())
    # per row, the final scores as (seeds, tasks): rliable's layout, bootstrapped over seeds within each task
    scores = score_matrix(results, algos)
    aggregate = suite.aggregate(scores, st.bootstrap_reps, st.confidence)
    table = summarize(results, algos, st.bootstrap_reps, st.confidence, p.budget.below_regime, bases, aggregate)
    poi = {r["algorithm"]: (r["probability"], r["ci_low"], r["ci_high"]) for r in
           suite.improvement(scores, st.baseline, st.bootstrap_reps, st.confidence).to_dict("records")}
    paper = suite.paper_table(scores, tasks, aggregate)
    header = f"# {scope}: {len(tasks)} task(s) x {len(seeds)} seeds {seeds}, " + data_line(tasks, algos, runs, seeds)
    caps = {r.get("max_episode_steps", 0) for r in results} - {0}
    if caps:
        header += f"; evaluation episodes capped at {max(caps)} steps (smoke: not comparable with full episodes)"
    curves = curves_frame(results)
    (csv, md, metrics, table_csv, table_md, table_tex, profile_png, curves_csv, curves_png, online_png,
     intervals_png, plots) = summary_files(scope)
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(md) as tmp:
        tmp.write_text(markdown(table, poi, st.baseline, header))
    # a few numbers per row, so that `dvc exp show` stays readable; summary.csv holds the rest
    write_json(metrics, {row["algorithm"]: {"iqm": row["score_iqm"], "ci_low": row["iqm_ci_low"],
                                            "ci_high": row["iqm_ci_high"], "mean": row["score_mean"],
                                            "optimality_gap": row["optimality_gap"]}
                         for row in table.to_dict("records")})
    with atomic_path(table_csv) as tmp:
        tmp.write_text(suite.table_csv(paper))
    with atomic_path(table_md) as tmp:
        tmp.write_text(suite.table_markdown(paper, header))
    with atomic_path(table_tex) as tmp:
        tmp.write_text(suite.table_latex(paper, header.lstrip("# ")))
    with atomic_path(profile_png) as tmp:
        suite.plot_profile(scores, tmp, header.lstrip("# "), reps=st.bootstrap_reps)
    with atomic_path(curves_csv) as tmp:
        curves.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(plots) as tmp:
        tmp.mkdir()
        for algo, stats in mean_curves(curves).items():
            stats.to_csv(tmp / Path(row_curve_file(scope, algo)).name, index=False, float_format="%.4f")
    with atomic_path(curves_png) as tmp:
        plot_curves(curves[curves.step_unit == "grad"], tmp, header.lstrip("# "), "gradient steps (offline rows)")
    with atomic_path(online_png) as tmp:
        plot_curves(curves[curves.step_unit == "env"], tmp, header.lstrip("# "),
                    "environment steps (online rows; evaluation episodes, not training episodes)")
    with atomic_path(intervals_png) as tmp:
        plot_intervals(table, tmp, header.lstrip("# "))
    print(table.to_string(index=False))


def data_line(tasks, algos, runs, seeds) -> str:
    """The budget and each task's data, as its runs recorded them: the dataset's description and which
    reference scores normalise it (its own, or D4RL's table for its environment)."""
    from diffrl.algos import ONLINE
    offline = [a for a in algos if a not in ONLINE]
    first = {t: runs[t, (offline or algos)[0], seeds[0]] for t in tasks}
    budget = next(iter(first.values())).get("run_info", {}).get("budget", "?")
    parts = []
    for t in tasks:
        info = first[t].get("run_info", {})
        data = info.get("dataset", "?") if offline else "online rows only"
        ref = first[t].get("reference_scores", {}).get("source", "")
        parts.append(f"{t}: {data}" + (f" (normalised with {ref})" if ref else ""))
    return f"budget `{budget}`; data: " + "; ".join(parts)


if __name__ == "__main__":
    a = stage.parser(__doc__)
    a.add_argument("--scope", required=True, help="a task, an environment (its tasks) or `suite` (every task)")
    args = a.parse_args()
    stage.run("summary", args, log_file("summary", args.scope), main)
