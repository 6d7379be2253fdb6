"""The tilts on HalfCheetah: each offline row's `quick` policy evaluated untilted and under a sweep of
inference-time tilts, through the pipeline itself (Snakemake, the tilted rows' evaluate jobs).

    python studies/tilts/tilt_halfcheetah.py [--rows bc dql] [--seeds 0 1 2] [--lambdas 0 16 64 128]
        [--particles 1 32] [--mala-steps 0] [--budget quick] [--cores 2] [--configfile OVERLAY.yaml] [--name STEM]

First `snakemake` builds the base rows' runs and evaluations at the budget (the dataset, BC's IQL
critic, the training runs; cached runs are reused). Then, for each tilt of the sweep, one `snakemake`
run evaluates the tilted rows (`{row}_tilt`) with `tfg_lambda` and `num_particles` set on the command
line (params.yaml's other tilt settings), which reruns only those evaluations. Every evaluation is the
evaluate stage's: `eval_episodes` full episodes on the final-evaluation episode seeds, the same
episodes for a row and its tilts. Writes studies/tilts/results/halfcheetah_tilts.csv (one line per row,
tilt and seed; the untilted row has lambda and particles empty) and halfcheetah_tilts.png (score
against lambda per row, IQM over seeds with its 95% stratified-bootstrap interval, one line per
particle count, the untilted row as a band). Each setting's lines are written as it finishes,
replacing those of the same row, tilt and seed (a cached evaluation keeps its line); `--plot-only`
redraws the figure and prints the table from the CSV.

`--configfile` passes a Snakemake overlay over params.yaml to every `snakemake` run (its path goes in
the CSV's `configfile` column and the figure's title), e.g. studies/tilts/eda_ours.yaml, EDA under
our forms at the steps where it learns; `--name` sets the CSV's and figure's file stem, so a study
under an overlay, or on another machine's data, is written beside the params.yaml one, not over it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "studies/learning_curves"))
from learning_curves import machine  # noqa: E402

ENV = "halfcheetah"
TASK = "halfcheetah-medium"  # its runs and dataset: runs/TASK/..., data/TASK/dataset


def snakemake(targets: list[str], config: list[str], cores: int, configfile: str | None) -> None:
    overlay = ["--configfile", configfile] if configfile else []
    cmd = ["snakemake", "--cores", str(cores), *overlay, "--config", *config, "--", *targets]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def evaluation_file(row: str, seed: int) -> Path:
    return ROOT / f"runs/{TASK}/eval/{row}/seed{seed}.json"


def evaluation(row: str, seed: int) -> dict:
    return json.loads(evaluation_file(row, seed).read_text())


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--rows", nargs="+", default=["bc", "dql"])
    a.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a.add_argument("--budget", default="quick")
    a.add_argument("--lambdas", nargs="+", type=float, default=[0, 16, 64, 128])
    a.add_argument("--particles", nargs="+", type=int, default=[1, 32])
    a.add_argument("--mala-steps", nargs="+", type=int, default=[0],
                   help="MALA corrector steps per level (eda_tilt only: its policy is energy-parameterised)")
    a.add_argument("--cores", type=int, default=2)
    a.add_argument("--out", default=str(HERE / "results"))
    a.add_argument("--configfile", help="a Snakemake overlay over params.yaml, passed to every run")
    a.add_argument("--name", default="halfcheetah_tilts", help="file stem of the CSV and the figure")
    a.add_argument("--plot-only", action="store_true", help="redraw the figure and table from the CSV")
    args = a.parse_args()
    if args.plot_only:
        df = pd.read_csv(Path(args.out) / f"{args.name}.csv")
        plot(df, Path(args.out) / f"{args.name}.png")
        print(table(df))
        return
    seeds = "[" + ", ".join(map(str, args.seeds)) + "]"
    base_config = [f"budget={args.budget}", f"seeds={seeds}"]
    runs = [(row, s) for row in args.rows for s in args.seeds]
    import torch
    torch.set_num_threads(1)  # for machine(): every pipeline job runs on one thread (`threads: 1` in each rule)
    who = machine()
    from diffrl.offline import describe_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / f"{args.name}.csv"
    data = describe_dataset(str(ROOT / f"data/{TASK}/dataset"))

    def record(row, base, lam, particles, mala, t0) -> None:
        """Write one setting's lines to the CSV at once (a long sweep keeps what finished). Each replaces
        the line of the same row, tilt and seed, unless Snakemake reused that evaluation: then the line
        that measured it (its wall_s) stays."""
        old = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["row", "seed", "tfg_lambda", "num_particles"])
        old_mala = old.mala_steps.fillna(0) if "mala_steps" in old else 0
        same = (old.row == base) & (old.tfg_lambda.isna() if lam is None else (old.tfg_lambda == lam) & (
            old.num_particles == particles) & (old_mala == mala))
        reused = {s for s in args.seeds
                  if evaluation_file(row, s).stat().st_mtime < t0 and (same & (old.seed == s)).any()}
        fresh = [s for s in args.seeds if s not in reused]
        new = pd.DataFrame([{
            "row": base, "tilted_row": row if row != base else "", "tfg_lambda": lam, "num_particles": particles,
            "mala_steps": mala, "seed": s, "score": e["final_score"], "return": e["final_return"],
            "episodes": e["eval_episodes"], "grad_steps": e["grad_steps"], "budget": args.budget,
            "configfile": args.configfile or "", "wall_s": round(time.time() - t0, 1), "machine": who, "data": data}
            for s in fresh for e in [evaluation(row, s)]])
        kept = old[~(same & old.seed.isin(fresh))]
        (pd.concat([kept, new], ignore_index=True) if len(kept) else new).to_csv(csv, index=False)

    t0 = time.time()
    snakemake([f"runs/{TASK}/eval/{row}/seed{s}.json" for row, s in runs], base_config, args.cores, args.configfile)
    for row in args.rows:
        record(row, row, None, None, None, t0)
    for lam, particles, mala in itertools.product(args.lambdas, args.particles, args.mala_steps):
        t0 = time.time()
        tilts = [f"{row}_tilt={{tfg_lambda: {lam:g}, num_particles: {particles}, mala_steps: {mala}}}"
                 for row in args.rows]
        snakemake([f"runs/{TASK}/eval/{row}_tilt/seed{s}.json" for row, s in runs], base_config + tilts,
                  args.cores, args.configfile)
        for row in args.rows:
            record(f"{row}_tilt", row, lam, particles, mala, t0)

    df = pd.read_csv(csv)
    plot(df, out / f"{args.name}.png")
    print(table(df))


def intervals(df: pd.DataFrame) -> pd.DataFrame:
    """IQM over seeds and its 95% stratified-bootstrap interval per (row, lambda, particles, MALA steps)."""
    from diffrl.suite import aggregate
    keys = ["row", "tfg_lambda", "num_particles", "mala_steps"]
    df = df.assign(mala_steps=df.mala_steps if "mala_steps" in df else float("nan"))
    df.loc[df.tfg_lambda.notna(), "mala_steps"] = df.mala_steps.fillna(0)  # lines from before the column: no MALA
    out = []
    for key, g in df.groupby(keys, dropna=False, sort=False):
        point, lo, hi = aggregate({"x": g.score.to_numpy()[:, None]}, reps=2000, confidence=0.95).iloc[0][
            ["iqm", "iqm_ci_low", "iqm_ci_high"]]
        out.append(dict(zip(keys, key), iqm=point, lo=lo, hi=hi, mean=g.score.mean(), seeds=len(g)))
    return pd.DataFrame(out)


def setting(particles: float, mala: float) -> str:
    """'32 particles', '1 particle, MALA 4': a tilt's settings besides lambda."""
    text = f"{int(particles)} particle{'s' if particles > 1 else ''}"
    return text + (f", MALA {int(mala)}" if mala else "")


def table(df: pd.DataFrame) -> str:
    lines = ["| row | tilt | score IQM [95% CI] | mean | seeds |", "|---|---|---|---|---|"]
    for _, r in intervals(df).iterrows():
        tilt = "none" if pd.isna(r.tfg_lambda) else f"λ = {r.tfg_lambda:g}, {setting(r.num_particles, r.mala_steps)}"
        lines.append(f"| {r.row} | {tilt} | {r.iqm:.1f} [{r.lo:.1f}, {r.hi:.1f}] | {r['mean']:.1f} | {r.seeds} |")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    iv = intervals(df)
    rows = list(dict.fromkeys(iv.row))
    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.6), squeeze=False, sharex=True)
    # one colour per particle count across the panels (a row swept over fewer settings keeps them)
    colour = {p: f"C{i}" for i, p in enumerate(sorted(iv.num_particles.dropna().unique()))}
    for ax, row in zip(axes[0], rows):
        r = iv[iv.row == row]
        base = r[r.tfg_lambda.isna()]
        if len(base):
            b = base.iloc[0]
            ax.axhspan(b.lo, b.hi, color="0.85", label="untilted row (95% CI)")
            ax.axhline(b.iqm, color="0.4", lw=1)
        for (particles, mala), g in r[r.tfg_lambda.notna()].groupby(["num_particles", "mala_steps"]):
            g = g.sort_values("tfg_lambda")
            x, y, lo, hi = (g[k].to_numpy() for k in ("tfg_lambda", "iqm", "lo", "hi"))
            ax.errorbar(x, y, yerr=[y - lo, hi - y], capsize=3, color=colour[particles],
                        marker="s" if mala else "o", ls="--" if mala else "-", label=setting(particles, mala))
        ax.set_xscale("symlog", linthresh=16)
        ax.set_xlabel("tfg_lambda")
        ax.set_title(f"{row}_tilt")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalised score (IQM over seeds)")
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="best")
    seeds = sorted(df.seed.unique())
    overlay = df.configfile.dropna().iloc[0] if "configfile" in df and df.configfile.notna().any() else ""
    fig.suptitle(f"HalfCheetah (generated medium data, not D4RL), budget {df.budget.iloc[0]}"
                 f"{chr(10) + ' + ' + overlay if overlay else ''}, seeds {', '.join(map(str, seeds))}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
