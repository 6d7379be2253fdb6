"""Multi-seed statistics: the summary table (mean, SE, std, and rliable's aggregates over tasks x
seeds from diffrl.suite; a tilted row next to its base row with its probability of improvement over
it), learning curves and interval plots."""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd


COLUMNS = ["algorithm", "n_seeds", "n_tasks", "score_mean", "score_se", "score_std", "score_iqm", "iqm_ci_low",
           "iqm_ci_high", "median", "optimality_gap", "optimality_gap_ci_low", "optimality_gap_ci_high", "best_mean",
           "selected_mean", "return_mean", "env_steps", "grad_steps", "wall_s", "note", "base_row", "poi_vs_base",
           "poi_vs_base_low", "poi_vs_base_high"]
BELOW_REGIME = "below its learning regime at this budget (docs/budgets.md)"


def score_matrix(results: list[dict], algorithms: list[str]) -> dict[str, np.ndarray]:
    """Each row's final scores as a (seeds, tasks) array, rliable's layout (diffrl.suite), from the
    evaluation records (a record without a task counts as one task)."""
    tasks = list(dict.fromkeys(r.get("task") for r in results))
    seeds = sorted({r["seed"] for r in results}) if all("seed" in r for r in results) else None
    out = {}
    for a in algorithms:
        rs = [r for r in results if r["algorithm"] == a]
        if seeds is None:  # records without seeds: one run per record, in order
            out[a] = np.array([[r["final_score"]] for r in rs], dtype=np.float64)
            continue
        by = {(r.get("task"), r["seed"]): r["final_score"] for r in rs}
        out[a] = np.array([[by[t, s] for t in tasks] for s in seeds], dtype=np.float64)
    return out


def table_order(algorithms: list[str], bases: dict[str, str]) -> list[str]:
    """`algorithms` in their order, each tilted row (a key of `bases`) moved next to its base row,
    after the base's other tilted rows."""
    order = [a for a in algorithms if a not in bases]
    for a in algorithms:
        if a in bases:
            at = order.index(bases[a]) + 1
            while at < len(order) and bases.get(order[at]) == bases[a]:
                at += 1
            order.insert(at, a)
    return order


def summarize(results: list[dict], algorithms: list[str], reps: int, confidence: float,
              below_regime=(), bases: dict[str, str] | None = None, aggregate: pd.DataFrame | None = None
              ) -> pd.DataFrame:
    """One row per algorithm from the evaluation records of its seeds; rows in `below_regime`, and the
    tilted rows of a base row in it, carry the BELOW_REGIME note (their score says what the budget
    allowed, not what the algorithm does). `bases`: tilted row -> its base row, whose probability
    of improvement over the base (with its CI) fills base_row and poi_vs_base*. `aggregate`: the rows'
    diffrl.suite.aggregate, when the caller has it already."""
    from diffrl import suite
    bases = bases or {}
    by = {a: [r for r in results if r["algorithm"] == a] for a in algorithms}
    matrix = score_matrix(results, algorithms)
    agg = (suite.aggregate(matrix, reps, confidence) if aggregate is None else aggregate).set_index("algorithm")
    rows = []
    for a, rs in by.items():
        s = matrix[a].ravel()
        n = len(s)
        if a in bases:
            p = suite.improvement({a: matrix[a], bases[a]: matrix[bases[a]]}, bases[a], reps, confidence).iloc[0]
            poi = (p.probability, p.ci_low, p.ci_high)
        else:
            poi = (float("nan"),) * 3
        rows.append({
            "algorithm": a, "n_seeds": matrix[a].shape[0], "n_tasks": matrix[a].shape[1],
            "score_mean": s.mean(),
            "score_se": s.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan"),
            "score_std": s.std(ddof=1) if n > 1 else float("nan"),
            # rliable's aggregates over tasks x seeds (diffrl.suite), stratified-bootstrap CIs
            "score_iqm": agg.loc[a, "iqm"], "iqm_ci_low": agg.loc[a, "iqm_ci_low"],
            "iqm_ci_high": agg.loc[a, "iqm_ci_high"], "median": agg.loc[a, "median"],
            "optimality_gap": agg.loc[a, "optimality_gap"], "optimality_gap_ci_low": agg.loc[a, "optimality_gap_ci_low"],
            "optimality_gap_ci_high": agg.loc[a, "optimality_gap_ci_high"],
            # the best of evaluations with eval_episodes episodes each, where the runs had them (stages/evaluate.py)
            "best_mean": (float(np.mean([r["best_during_training_score"] for r in rs]))
                          if all(r.get("best_during_training_score") is not None for r in rs) else float("nan")),
            # Diffusion-QL's offline model selection (by BC loss): NaN for rows without it
            "selected_mean": (float(np.mean([r["offline_selected_score"] for r in rs]))
                              if all("offline_selected_score" in r for r in rs) else float("nan")),
            "return_mean": float(np.mean([r["final_return"] for r in rs])),
            "env_steps": int(np.mean([r["env_steps"] for r in rs])),
            "grad_steps": int(np.mean([r["grad_steps"] for r in rs])),
            "wall_s": float(np.mean([r["wall_s"] for r in rs])),
            "note": BELOW_REGIME if a in below_regime or bases.get(a) in below_regime else "",
            "base_row": bases.get(a, ""), "poi_vs_base": poi[0], "poi_vs_base_low": poi[1], "poi_vs_base_high": poi[2],
        })
    return pd.DataFrame(rows, columns=COLUMNS)


CURVE_COLUMNS = ["algorithm", "seed", "step_unit", "step", "score", "return"]


def curves_frame(results: list[dict]) -> pd.DataFrame:
    """Evaluation points of every run; step_unit is `grad` (offline rows) or `env` (online rows)."""
    rows = [{"algorithm": r["algorithm"], "seed": r["seed"], "step_unit": r.get("step_unit", "grad"),
             "step": c["step"], "score": c["score"], "return": c["return"]}
            for r in results for c in r.get("curve", [])]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def mean_curves(curves: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per row: step, mean score over seeds, its 95% half-width (normal approximation, 1.96 SE; 0
    with one seed) and the number of seeds at that step."""
    out = {}
    for algo, g in curves.groupby("algorithm", sort=False):
        stats = g.groupby("step")["score"].agg(["mean", "std", "count"]).reset_index()
        stats["half"] = (1.96 * stats["std"] / np.sqrt(stats["count"])).fillna(0)
        out[algo] = stats.rename(columns={"mean": "score", "count": "seeds"})[["step", "score", "half", "seeds"]]
    return out


def plot_curves(curves: pd.DataFrame, path, title: str, xlabel: str = "gradient steps") -> None:
    """Mean normalised score over seeds against steps, one line per row, with a 95% band
    (normal approximation, 1.96 SE) where there is more than one seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    means = mean_curves(curves)
    for algo, stats in means.items():
        ax.plot(stats["step"], stats["score"], marker="." if len(stats) < 4 else None, label=algo)
        ax.fill_between(stats["step"], stats["score"] - stats["half"], stats["score"] + stats["half"], alpha=0.2)
    if means:
        points = pd.concat([m.assign(algorithm=a) for a, m in means.items()])
        off = points["score"] < OFF_SCALE
        if off.any() and not off.all():  # keep the axis on the rows within scale, name the others
            ax.set_ylim(*_axis_limits(points.loc[~off, "score"] - points.loc[~off, "half"],
                                      points.loc[~off, "score"] + points.loc[~off, "half"]))
            low = points[off].groupby("algorithm", sort=False)["score"].min()
            ax.text(0.01, 0.01, "off scale: " + ", ".join(f"{a} (down to {v:.3g})" for a, v in low.items()),
                    transform=ax.transAxes, fontsize=7, va="bottom")
    if curves.empty:
        ax.text(0.5, 0.5, "no rows of this kind in `algorithms`", ha="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalised score (mean, 95% CI over seeds)")
    ax.set_title(textwrap.fill(title, 80), fontsize=8)
    if not curves.empty:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


OFF_SCALE = -100.0   # normalised scores below this are named at the axis edge, not drawn to scale


def _axis_limits(lows, highs) -> tuple[float, float]:
    """Axis limits covering [min(lows), max(highs)] and 0, with a margin."""
    lo, hi = min(float(np.min(lows)), 0.0), max(float(np.max(highs)), 0.0)
    pad = 0.08 * (hi - lo) + 1.0
    return lo - pad, hi + pad


def plot_intervals(table: pd.DataFrame, path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(table)))
    y = np.arange(len(table))
    ax.errorbar(table["score_iqm"], y, xerr=[table["score_iqm"] - table["iqm_ci_low"],
                                            table["iqm_ci_high"] - table["score_iqm"]], fmt="o", capsize=4)
    ax.set_yticks(y, table["algorithm"])
    # a row far below any policy (e.g. actions outside the box paying a huge control cost) would
    # squash every other interval into a dot: keep the axis on the rest and name it at the edge
    off = table["score_iqm"] < OFF_SCALE
    if off.any() and not off.all():
        lo, hi = _axis_limits(table.loc[~off, "iqm_ci_low"], table.loc[~off, "iqm_ci_high"])
        ax.set_xlim(lo, hi)
        for i in np.flatnonzero(off.to_numpy()):
            ax.annotate(f"\u2190 {table['score_iqm'].iloc[i]:.3g} (off scale)", (lo, y[i]),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel("IQM normalised score (95% stratified-bootstrap CI)")
    ax.set_title(textwrap.fill(title, 80), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def markdown(table: pd.DataFrame, poi: dict, baseline: str, header: str) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "nan" if np.isnan(v) else f"{v:.2f}"
        return str(v)
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in COLUMNS) + " |" for _, row in table.iterrows()]
    lines += ["", "score_* are final scores (D4RL-normalised, fresh evaluation episodes), over every task and seed; "
              "score_iqm, median and optimality_gap (mean shortfall below 100) are rliable's aggregates with "
              "stratified-bootstrap CIs (seeds resampled within each task); best_mean is the best of the run's "
              "evaluations when each had eval_episodes episodes (nan when its curve points had fewer); "
              "selected_mean is the score of the checkpoint chosen by offline model selection (Diffusion-QL "
              "rows: lowest BC loss, no return looked at; nan for other rows). A tilted row evaluates the trained "
              "policy of its base_row under an inference-time tilt, on the same episodes; poi_vs_base is the "
              "probability that it scores above base_row (low, high: 95% CI).", "",
              f"Probability of improvement over `{baseline}` (95% CI):", "", "| algorithm | P(X > baseline) | CI |",
              "|---|---|---|"]
    lines += [f"| {k} | {v[0]:.2f} | [{v[1]:.2f}, {v[2]:.2f}] |" for k, v in poi.items()]
    return "\n".join(lines) + "\n"
