"""Multi-seed statistics: the summary table (mean, SE, std, IQM with a stratified-bootstrap CI; a
tilted row next to its base row with its probability of improvement over it), probability of
improvement against a baseline, learning curves and interval plots."""
from __future__ import annotations

import textwrap
import warnings

import numpy as np
import pandas as pd

# rliable hands arch a RandomState, which arch now warns about; the seeding is still exact.
warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)

COLUMNS = ["algorithm", "n_seeds", "score_mean", "score_se", "score_std", "score_iqm", "iqm_ci_low",
           "iqm_ci_high", "best_mean", "selected_mean", "return_mean", "env_steps", "grad_steps", "wall_s", "note",
           "base_row", "poi_vs_base", "poi_vs_base_low", "poi_vs_base_high"]
BELOW_REGIME = "below its learning regime at this budget (docs/budgets.md)"


def iqm(x: np.ndarray) -> float:
    """Interquartile mean (rliable's definition: 25% trimmed mean over all runs)."""
    from rliable import metrics
    return float(metrics.aggregate_iqm(np.asarray(x, dtype=np.float64).reshape(-1, 1)))


def iqm_interval(scores: dict[str, np.ndarray], reps: int, confidence: float, seed: int = 0) -> dict:
    """IQM point estimate and stratified-bootstrap CI per algorithm (rliable)."""
    from rliable import library as rly
    from rliable import metrics
    score_dict = {k: np.asarray(v, dtype=np.float64).reshape(-1, 1) for k, v in scores.items()}
    out = {}
    for k, v in score_dict.items():
        if len(v) < 2:  # a single run has no spread to resample
            out[k] = (float(v.mean()), float(v.mean()), float(v.mean()))
            continue
        point, ci = rly.get_interval_estimates({k: v}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps,
                                               confidence_interval_size=confidence,
                                               random_state=np.random.RandomState(seed))
        out[k] = (float(point[k][0]), float(ci[k][0, 0]), float(ci[k][1, 0]))
    return out


def probability_of_improvement(scores: dict[str, np.ndarray], baseline: str, reps: int, confidence: float,
                               seed: int = 0) -> dict:
    """P(X > Y) of each algorithm X over the baseline Y (Mann-Whitney, ties count half), with CI."""
    from rliable import library as rly
    from rliable import metrics
    out = {}
    y = np.asarray(scores[baseline], dtype=np.float64).reshape(-1, 1)
    for k, v in scores.items():
        if k == baseline:
            continue
        x = np.asarray(v, dtype=np.float64).reshape(-1, 1)
        point = float(metrics.probability_of_improvement(x, y))
        if len(x) > 1 and len(y) > 1:
            _, ci = rly.get_interval_estimates({k: (x, y)}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]),
                                               reps=reps, confidence_interval_size=confidence,
                                               random_state=np.random.RandomState(seed))
            out[k] = (point, float(ci[k][0, 0]), float(ci[k][1, 0]))
        else:
            out[k] = (point, point, point)
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
              below_regime=(), bases: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per algorithm from the evaluation records of its seeds; rows in `below_regime`, and the
    tilted rows of a base row in it, carry the BELOW_REGIME note (their score says what the budget
    allowed, not what the algorithm does). `bases`: tilted row -> its base row, whose probability
    of improvement over the base (with its CI) fills base_row and poi_vs_base*."""
    bases = bases or {}
    by = {a: [r for r in results if r["algorithm"] == a] for a in algorithms}
    scores = {a: np.array([r["final_score"] for r in rs]) for a, rs in by.items()}
    intervals = iqm_interval(scores, reps, confidence)
    rows = []
    for a, rs in by.items():
        s = scores[a]
        n = len(s)
        poi = (probability_of_improvement({a: s, bases[a]: scores[bases[a]]}, bases[a], reps, confidence)[a]
               if a in bases else (float("nan"),) * 3)
        rows.append({
            "algorithm": a, "n_seeds": n, "score_mean": s.mean(),
            "score_se": s.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan"),
            "score_std": s.std(ddof=1) if n > 1 else float("nan"),
            "score_iqm": intervals[a][0], "iqm_ci_low": intervals[a][1], "iqm_ci_high": intervals[a][2],
            "best_mean": float(np.mean([r["best_during_training_score"] for r in rs])),
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
    lines += ["", "score_* are final scores (D4RL-normalised, fresh evaluation episodes); best_mean is the "
              "best-during-training score (selected on evaluation episodes, optimistic by construction); "
              "selected_mean is the score of the checkpoint chosen by offline model selection (Diffusion-QL "
              "rows: lowest BC loss, no return looked at; nan for other rows). A tilted row evaluates the trained "
              "policy of its base_row under an inference-time tilt, on the same episodes; poi_vs_base is the "
              "probability that it scores above base_row (low, high: 95% CI).", "",
              f"Probability of improvement over `{baseline}` (95% CI):", "", "| algorithm | P(X > baseline) | CI |",
              "|---|---|---|"]
    lines += [f"| {k} | {v[0]:.2f} | [{v[1]:.2f}, {v[2]:.2f}] |" for k, v in poi.items()]
    return "\n".join(lines) + "\n"
