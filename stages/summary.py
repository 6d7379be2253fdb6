"""Stage `summary`: multi-seed statistics of every row for one environment.

Writes results/{env}_summary.csv and .md, results/{env}_metrics.json (each row's score IQM, its
interval and mean, for `dvc exp show`), results/{env}_curves.csv (every evaluation point of every
run), results/{env}_plots/ROW.csv (each row's curve, mean over seeds, for `dvc plots show`), PNG
learning curves (offline rows against gradient steps, online rows against environment steps) and
IQM intervals. A tilted row is listed next to its base row, with its probability of improvement
over it. Every declared run must be there: a missing or failed seed stops the stage with its
name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import eval_file, log_file, row_curve_file, summary_files  # noqa: E402


def main(p, args):
    import json

    from diffrl.algos import TILT_BASES
    from diffrl.stats import (curves_frame, markdown, mean_curves, plot_curves, plot_intervals,
                              probability_of_improvement, summarize, table_order)
    from diffrl.utils import atomic_path, write_json

    seeds, st = p["seeds"], p["stats"]
    bases = {a: TILT_BASES[a] for a in p["algorithms"] if a in TILT_BASES}
    algos = table_order(p["algorithms"], bases)
    missing = [eval_file(args.env, a, s) for a in algos for s in seeds if not Path(eval_file(args.env, a, s)).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} declared run(s) have no evaluation, e.g. {missing[0]}: "
                                f"rerun `snakemake results/{args.env}_summary.csv` (a failed seed is never "
                                f"summarised as if it had finished)")
    results = [json.loads(Path(eval_file(args.env, a, s)).read_text()) for a in algos for s in seeds]
    table = summarize(results, algos, st.bootstrap_reps, st.confidence, p.budget.below_regime, bases)
    scores = {a: [r["final_score"] for r in results if r["algorithm"] == a] for a in algos}
    poi = probability_of_improvement(scores, st.baseline, st.bootstrap_reps, st.confidence)
    offline = [r for r in results if not r.get("online")]
    meta = (offline or results)[0].get("run_info", {})
    header = (f"# {args.env}: {len(seeds)} seeds {seeds}, budget `{meta.get('budget', '?')}`, data: "
              f"{meta.get('dataset', '?') if offline else 'online rows only'}")
    caps = {r.get("max_episode_steps", 0) for r in results} - {0}
    if caps:
        header += f"; evaluation episodes capped at {max(caps)} steps (smoke: not comparable with full episodes)"
    curves = curves_frame(results)
    csv, md, metrics, curves_csv, curves_png, online_png, intervals_png, plots = summary_files(args.env)
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(md) as tmp:
        tmp.write_text(markdown(table, poi, st.baseline, header))
    # a few numbers per row, so that `dvc exp show` stays readable; summary.csv holds the rest
    write_json(metrics, {row["algorithm"]: {"iqm": row["score_iqm"], "ci_low": row["iqm_ci_low"],
                                            "ci_high": row["iqm_ci_high"], "mean": row["score_mean"]}
                         for row in table.to_dict("records")})
    with atomic_path(curves_csv) as tmp:
        curves.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(plots) as tmp:
        tmp.mkdir()
        for algo, stats in mean_curves(curves).items():
            stats.to_csv(tmp / Path(row_curve_file(args.env, algo)).name, index=False, float_format="%.4f")
    with atomic_path(curves_png) as tmp:
        plot_curves(curves[curves.step_unit == "grad"], tmp, header.lstrip("# "), "gradient steps (offline rows)")
    with atomic_path(online_png) as tmp:
        plot_curves(curves[curves.step_unit == "env"], tmp, header.lstrip("# "),
                    "environment steps (online rows; evaluation episodes, not training episodes)")
    with atomic_path(intervals_png) as tmp:
        plot_intervals(table, tmp, header.lstrip("# "))
    print(table.to_string(index=False))


if __name__ == "__main__":
    a = stage.parser(__doc__)
    a.add_argument("--env", required=True)
    args = a.parse_args()
    stage.run("summary", args, log_file("summary", args.env), main)
