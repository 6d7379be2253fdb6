"""Statistics across the tasks and seeds of a benchmark suite, as rliable (Agarwal et al. 2021) defines
them, and the table laid out as the D4RL tables of the Diffusion-QL, DTQL and EDA papers lay theirs out.

rliable's IQM is the 25% trimmed mean of all runs pooled across tasks (scipy's trim_mean, which cuts
floor(0.25 n) runs at each end: with fewer than 4 runs in all it is the plain mean); its median and mean
are the median and mean of the per-task means over seeds; the optimality gap is the mean over all runs of
max(0, gamma - score), with gamma = 100 here since the scores are D4RL-normalised on a 0-100 scale.
Intervals are stratified-bootstrap percentile intervals: each resample draws the seeds again within each
task, independently per task, and keeps the set of tasks fixed. The resamples are rliable's own draws, in
its order, from numpy's global RNG seeded here; the statistics are computed for all resamples at once, so
the results equal rliable's get_interval_estimates and create_performance_profile bit for bit
(tests/test_suite.py) at a fraction of the time (one scipy or numpy call per resample there).

Input everywhere: `scores` maps a row (algorithm) name to an array (n_seeds, n_tasks) of normalised
final scores, every row the same shape; `tasks` names the columns in order.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd

GAMMA = 100.0   # optimality-gap threshold on the 0-100 normalised scale (rliable's default, 1, is for 0-1)
METRICS = ("iqm", "median", "mean", "optimality_gap")
AGGREGATE_COLUMNS = (["algorithm"] + [f"{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")]
                     + ["tasks", "seeds"])
IMPROVEMENT_COLUMNS = ["algorithm", "baseline", "probability", "ci_low", "ci_high"]
TABLE_COLUMNS = ["row", "kind", "algorithm", "value", "se", "ci_low", "ci_high", "seeds", "best", "cell"]
AGGREGATE_LABELS = {"iqm": "IQM", "median": "Median", "mean": "Mean",
                    "optimality_gap": "Optimality gap (lower is better)"}
PM = "\u00b1"


def check_scores(scores: dict[str, np.ndarray], tasks: list[str] | None = None) -> dict[str, np.ndarray]:
    """The scores as float64 arrays, after checking that every row is a finite (seeds, tasks) array of
    one shape (and `tasks` names its columns); otherwise ValueError in one line naming the row."""
    if not scores:
        raise ValueError("scores is empty: it needs at least one row {name: array (seeds, tasks)}")
    out, first = {}, None
    for name, value in scores.items():
        x = np.asarray(value, dtype=np.float64)
        if x.ndim != 2 or 0 in x.shape:
            raise ValueError(f"row '{name}': scores must be a non-empty 2-D array (seeds, tasks), got shape {x.shape}")
        if first is not None and x.shape != out[first].shape:
            raise ValueError(f"row '{name}': shape {x.shape} differs from row '{first}' {out[first].shape}; "
                             "every row needs the same (seeds, tasks)")
        bad = np.argwhere(~np.isfinite(x))
        if len(bad):
            s, t = bad[0]
            where = f"task '{tasks[t]}'" if tasks is not None and len(tasks) == x.shape[1] else f"task column {t}"
            raise ValueError(f"row '{name}': non-finite score {x[s, t]} at seed index {s}, {where}")
        out[name] = x
        first = name if first is None else first
    if tasks is not None and len(tasks) != out[first].shape[1]:
        raise ValueError(f"tasks names {len(tasks)} tasks but the scores have {out[first].shape[1]} task columns")
    return out


@contextlib.contextmanager
def seeded(seed: int):
    """numpy's global RNG seeded with `seed` inside, restored after. rliable's stratified bootstraps draw
    their resampling indices with np.random.choice (the global state), not with the `random_state` that
    get_interval_estimates passes to arch (used only by methods other than percentile), so this is what
    makes a bootstrap reproducible; restoring the state keeps the caller's RNG untouched."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _metrics(x: np.ndarray) -> np.ndarray:
    """rliable's four aggregate metrics (metrics.aggregate_iqm, _median, _mean, _optimality_gap with
    gamma=100) of arrays (..., seeds, tasks), all leading resamples at once, in METRICS order (..., 4):
    the IQM is scipy's trim_mean of all runs (a partition, then the mean of the middle half), the median
    and mean those of the per-task means over seeds, the gap gamma minus the mean of min(score, gamma)."""
    runs = x.reshape(*x.shape[:-2], -1)
    n = runs.shape[-1]
    low = int(0.25 * n)
    iqm = np.partition(runs, (low, n - low - 1), axis=-1)[..., low:n - low].mean(-1)
    task_means = x.mean(-2)
    gap = GAMMA - np.minimum(x, GAMMA).reshape(runs.shape).mean(-1)
    return np.stack([iqm, np.median(task_means, axis=-1), task_means.mean(-1), gap], axis=-1)


def aggregate(scores: dict[str, np.ndarray], reps: int, confidence: float, seed: int = 0) -> pd.DataFrame:
    """One line per row: IQM, median, mean and optimality gap (gamma=100) with stratified-bootstrap
    percentile intervals of coverage `confidence` from `reps` resamples, equal to rliable's
    get_interval_estimates with its four metrics bit for bit (tested): the same resamples drawn in the
    same order, the metrics computed for all of them at once. The four metrics share each row's
    resamples (rliable's own example does so), and every row is bootstrapped with the global RNG seeded
    from `seed` afresh, so a row's interval does not depend on which other rows are passed or in what
    order, and repeated calls are identical."""
    lines = []
    for name, x in check_scores(scores).items():
        with seeded(seed):
            draws = np.stack([_seed_draws(x.shape[0], x.shape) for _ in range(reps)])
        point = _metrics(x)
        ci = _percentile_interval(_metrics(x[draws, np.arange(x.shape[1])]), confidence)
        line = {"algorithm": name, "tasks": x.shape[1], "seeds": x.shape[0]}
        for i, m in enumerate(METRICS):
            line.update({m: float(point[i]), f"{m}_ci_low": float(ci[0, i]), f"{m}_ci_high": float(ci[1, i])})
        lines.append(line)
    return pd.DataFrame(lines, columns=AGGREGATE_COLUMNS)


def _percentile_interval(values: np.ndarray, confidence: float) -> np.ndarray:
    """The percentile interval (2, k) of bootstrap replicates `values` (reps, k), computed as arch's
    conf_int computes it for rliable's get_interval_estimates (one np.percentile call per column)."""
    alpha = (1.0 - confidence) / 2
    percentiles = [100 * alpha, 100 * (1.0 - alpha)]
    return np.array([np.percentile(values[:, i], percentiles) for i in range(values.shape[1])]).T


def _seed_draws(runs: int, shape: tuple[int, int]) -> np.ndarray:
    """One stratified-bootstrap resample's seed indices, drawn as rliable draws them (np.random.choice on
    the global state): for each task, `runs` seeds with replacement."""
    return np.random.choice(runs, shape, replace=True)


def _probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rliable's probability_of_improvement of x over y for arrays (..., seeds, tasks), all leading
    resamples at once: per task the Mann-Whitney U of x over y (pairs with x > y, ties counting half;
    the exact value scipy's rank sums give) over the number of pairs, then the mean over tasks."""
    pairs_x, pairs_y = x[..., :, None, :], y[..., None, :, :]
    u = (pairs_x > pairs_y).sum((-3, -2)) + 0.5 * (pairs_x == pairs_y).sum((-3, -2))
    return (u / (x.shape[-2] * y.shape[-2])).mean(-1)


def improvement(scores: dict[str, np.ndarray], baseline: str, reps: int, confidence: float,
                seed: int = 0) -> pd.DataFrame:
    """Probability of improvement of each other row X over `baseline` Y: P(X_m > Y_m) per task m (the
    Mann-Whitney U statistic over all seed pairs, ties counting half; 0.5 where the two columns are equal),
    averaged over tasks, with a percentile interval from rliable's stratified bootstrap that resamples the
    seeds of X and of Y independently within each task (seeds are not paired). Seeded as `aggregate`.
    Equal to rliable's get_interval_estimates with metrics.probability_of_improvement, bit for bit
    (tested): the same resamples, drawn in the same order, with the statistic computed for all of them at
    once instead of one scipy call per task and resample."""
    scores = check_scores(scores)
    if baseline not in scores:
        raise ValueError(f"baseline '{baseline}' is not a row of the scores: {', '.join(scores)}")
    y = scores[baseline]
    tasks = np.arange(y.shape[1])
    lines = []
    for name, x in scores.items():
        if name == baseline:
            continue
        with seeded(seed):  # per resample: x's seeds, then y's (rliable's StratifiedIndependentBootstrap)
            draws = [(_seed_draws(x.shape[0], x.shape), _seed_draws(y.shape[0], y.shape)) for _ in range(reps)]
        x_draws, y_draws = (np.stack(d) for d in zip(*draws))
        values = _probability_of_improvement(x[x_draws, tasks], y[y_draws, tasks])[:, None]
        ci = _percentile_interval(values, confidence)
        lines.append({"algorithm": name, "baseline": baseline,
                      "probability": float(_probability_of_improvement(x, y)),
                      "ci_low": float(ci[0, 0]), "ci_high": float(ci[1, 0])})
    return pd.DataFrame(lines, columns=IMPROVEMENT_COLUMNS)


def score_profile(scores: dict[str, np.ndarray], tau, reps: int, confidence: float = 0.95,
                  seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The performance profiles and their intervals, as rliable's create_performance_profile returns them
    (run-score distributions: the fraction of all runs with score > tau, at each tau), bit for bit
    (tested): the rows' resamples drawn in the same order from the global RNG seeded once, every
    resample's profile computed at once."""
    tau = np.asarray(tau, dtype=np.float64)

    def profile(x):  # (..., seeds, tasks) -> (..., len(tau))
        return (x[..., None, :, :] > tau[:, None, None]).mean((-2, -1))
    profiles, cis = {}, {}
    with seeded(seed):
        for name, x in scores.items():
            draws = np.stack([_seed_draws(x.shape[0], x.shape) for _ in range(reps)])
            profiles[name] = profile(x)
            cis[name] = _percentile_interval(profile(x[draws, np.arange(x.shape[1])]), confidence)
    return profiles, cis


def default_tau(scores: dict[str, np.ndarray]) -> np.ndarray:
    """101 thresholds from min(0, lowest score) to 1.05 x max(100, highest score): the whole 0-100
    normalised range (100 = the expert reference), widened to any score outside it, with a margin that
    shows each profile reach 0."""
    allx = np.concatenate([x.ravel() for x in scores.values()])
    return np.linspace(min(0.0, float(allx.min())), 1.05 * max(GAMMA, float(allx.max())), 101)


def plot_profile(scores: dict[str, np.ndarray], path, title: str, tau=None, reps: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> None:
    """The performance profile (rliable's score distribution): the fraction of all runs, pooled across
    tasks, with score > tau, one line per row, with stratified-bootstrap bands; a PNG at `path`. `tau`
    defaults to default_tau(scores) (0 to 105 for scores within 0-100). Seeded as `aggregate`. Drawn
    with matplotlib alone, in rliable's layout: its plot_utils imports seaborn and scipy.stats, which
    cost a summary job more than a second."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scores = check_scores(scores)
    tau = default_tau(scores) if tau is None else np.asarray(tau, dtype=np.float64)
    profiles, cis = score_profile(scores, tau, reps, confidence, seed)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab20" if len(profiles) > 10 else "tab10").colors
    for i, (row, profile) in enumerate(profiles.items()):
        color = colors[i % len(colors)]
        ax.plot(tau, profile, color=color, linewidth=2.0, label=row)
        ax.fill_between(tau, *cis[row], color=color, alpha=0.15)
    ax.set_xlabel(r"D4RL-normalised score ($\tau$)")
    ax.set_ylabel(r"Fraction of runs with score $> \tau$")
    ax.set_ylim(0, 1.02)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize="small", loc="best")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def _cell(value: float, se: float = np.nan, low: float = np.nan, high: float = np.nan) -> str:
    """A table cell with one decimal, as the papers print them: "mean ± se" or "point [low, high]"."""
    if not np.isnan(se):
        return f"{value:.1f} {PM} {se:.1f}"
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def _best(values: np.ndarray, lower_is_better: bool = False) -> np.ndarray:
    """Which values are the best (all of those tied with it, up to float rounding in the last bits)."""
    target = values.min() if lower_is_better else values.max()
    return np.abs(values - target) <= 1e-9 * max(1.0, abs(target))


def paper_table(scores: dict[str, np.ndarray], tasks: list[str], aggregate_frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's table in long form: one line per (row, algorithm), rows being the tasks in order
    (value = mean over seeds, se = its standard error, std ddof=1 / sqrt(n), 0 with one seed) then the
    aggregate rows IQM, median, mean and optimality gap (value and ci_* from `aggregate_frame`, the output
    of aggregate()). `best` marks the highest value of each row, all tied ones, and the lowest optimality
    gap; `cell` is the formatted text. The writers pivot it: tasks as rows, algorithms as columns."""
    scores = check_scores(scores, tasks)
    missing = [a for a in scores if a not in set(aggregate_frame["algorithm"])]
    if missing:
        raise ValueError(f"aggregate_frame has no line for row(s) {', '.join(missing)}: pass aggregate(scores, ...)")
    agg = aggregate_frame.set_index("algorithm").loc[list(scores)]
    parts = []
    for t, task in enumerate(tasks):
        x = np.stack([s[:, t] for s in scores.values()])            # (algorithms, seeds)
        n = x.shape[1]
        mean, se = x.mean(axis=1), (x.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(x)))
        parts.append(pd.DataFrame({"row": task, "kind": "task", "algorithm": list(scores), "value": mean, "se": se,
                                   "ci_low": np.nan, "ci_high": np.nan, "seeds": n, "best": _best(mean)}))
    for m in METRICS:
        v = agg[m].to_numpy(dtype=np.float64)
        parts.append(pd.DataFrame({"row": AGGREGATE_LABELS[m], "kind": "aggregate", "algorithm": list(scores),
                                   "value": v, "se": np.nan, "ci_low": agg[f"{m}_ci_low"].to_numpy(),
                                   "ci_high": agg[f"{m}_ci_high"].to_numpy(), "seeds": agg["seeds"].to_numpy(),
                                   "best": _best(v, lower_is_better=m == "optimality_gap")}))
    table = pd.concat(parts, ignore_index=True)
    table["cell"] = [_cell(r.value, r.se, r.ci_low, r.ci_high) for r in table.itertuples()]
    return table[TABLE_COLUMNS]


def _grid(table: pd.DataFrame, bold) -> tuple[list[str], list[str], list[list[str]], list[str]]:
    """The wide layout of a paper_table: (algorithms, row labels, cells with `bold` applied to the best,
    kind of each row), in the table's order."""
    algos, rows = list(dict.fromkeys(table["algorithm"])), list(dict.fromkeys(table["row"]))
    by = table.set_index(["row", "algorithm"])
    cells = [[bold(by.at[(r, a), "cell"]) if by.at[(r, a), "best"] else by.at[(r, a), "cell"] for a in algos]
             for r in rows]
    kinds = [by.at[(r, algos[0]), "kind"] for r in rows]
    return algos, rows, cells, kinds


def table_csv(table: pd.DataFrame) -> str:
    """The paper_table as CSV in its long form (one line per task or aggregate and algorithm, with the
    numbers, the best flag and the formatted cell): the machine-readable twin of the Markdown and LaTeX."""
    return table.to_csv(index=False)


NOTE = ("Tasks: mean {pm} standard error over seeds. Aggregates (rliable, across tasks and seeds): point estimate "
        "[stratified-bootstrap percentile interval]. Bold: the best per row (all tied ones; the lowest gap).")


def table_markdown(table: pd.DataFrame, header: str) -> str:
    """The paper layout in Markdown (tasks as rows, algorithms as columns, best in **bold**), after `header`
    and followed by a note saying what the cells are."""
    algos, rows, cells, _ = _grid(table, lambda c: f"**{c}**")
    lines = [header, "", "| task | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    lines += [f"| {r} | " + " | ".join(c) + " |" for r, c in zip(rows, cells)]
    return "\n".join(lines + ["", NOTE.format(pm=PM)]) + "\n"


def latex_escape(name: str) -> str:
    """A name made safe for LaTeX text: its _, %, & and # escaped."""
    for ch in "_%&#":
        name = name.replace(ch, "\\" + ch)
    return name


def table_latex(table: pd.DataFrame, caption: str) -> str:
    """The paper layout as a LaTeX table with a booktabs tabular (\\usepackage{booktabs}): names escaped,
    best in \\textbf{}, \u00b1 as $\\pm$, a rule above the aggregate rows. `caption` goes in verbatim (it may
    hold LaTeX), followed by the note saying what the cells are."""
    algos, rows, cells, kinds = _grid(table, lambda c: f"\\textbf{{{c}}}")
    note = NOTE.format(pm="$\\pm$")
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{caption} {note}}}",
             "\\begin{tabular}{l" + "c" * len(algos) + "}", "\\toprule",
             " & ".join(["Task"] + [latex_escape(a) for a in algos]) + " \\\\", "\\midrule"]
    for i, (r, c) in enumerate(zip(rows, cells)):
        if i and kinds[i] != kinds[i - 1]:
            lines.append("\\midrule")
        lines.append(" & ".join([latex_escape(r)] + [s.replace(PM, "$\\pm$") for s in c]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"
