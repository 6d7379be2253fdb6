"""Stages of the 2-D bandit study.

    python stages/bandit.py bandit_train --name 8gaussians --algo dql  # runs/bandit/{name}/{algo}.npz (all seeds)
    python stages/bandit.py bandit_plot --name 8gaussians             # results/bandit_{name}.png
    python stages/bandit.py bandit_summary                            # results/bandit_summary.csv
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import bandit_file, bandit_plot_file, log_file  # noqa: E402

N_SAMPLES = 500  # policy actions drawn per algorithm and seed


def train(p, args):
    import numpy as np
    from diffrl.algos import PRETRAINED
    from diffrl.bandit import run_bandit
    from diffrl.utils import atomic_path, run_device, seed_everything

    configs = {s: p[s] for s in (*PRETRAINED.get(args.algo, ()), args.algo)}
    arrays = {}
    for seed in p["seeds"]:
        seed_everything(seed, p["deterministic"])
        out = run_bandit(args.name, args.algo, seed, configs, p.budget, N_SAMPLES, run_device(p))
        arrays[f"seed{seed}"] = out["actions"]
    arrays.update({f"data_{k}": v for k, v in out["data"].items()})
    with atomic_path(bandit_file(args.name, args.algo)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _runs(p, name):
    """{algo: ({seed: actions}, data)} of every row on toy set `name`."""
    import numpy as np
    from diffrl.algos import OFFLINE
    out = {}
    for algo in OFFLINE:
        path = Path(bandit_file(name, algo))
        if not path.exists():
            raise FileNotFoundError(f"bandit run {path} is missing: run `snakemake {path}`")
        z = np.load(path)
        missing = [s for s in p["seeds"] if f"seed{s}" not in z.files]
        if missing:
            raise FileNotFoundError(f"bandit run {path} has no seed {missing[0]}: rerun `snakemake {path}`")
        out[algo] = ({s: z[f"seed{s}"] for s in p["seeds"]},
                     {k[len("data_"):]: z[k] for k in z.files if k.startswith("data_")})
    return out


def plot(p, args):
    from diffrl.bandit import plot_bandit
    from diffrl.utils import atomic_path

    runs = _runs(p, args.name)
    data = next(iter(runs.values()))[1]
    by_seed = [{algo: acts[s] for algo, (acts, _) in runs.items()} for s in p["seeds"]]
    with atomic_path(bandit_plot_file(args.name)) as tmp:
        plot_bandit(args.name, data, by_seed, tmp)


def summary(p, args):
    import pandas as pd
    from diffrl.bandit import bandit_metrics
    from diffrl.utils import atomic_path

    rows = []
    for name in p["bandit_sets"]:
        runs = _runs(p, name)
        for seed in p["seeds"]:
            for algo, (acts, data) in runs.items():
                rows += bandit_metrics(name, seed, {algo: acts[seed]}, data)
    table = pd.DataFrame(rows)
    with atomic_path("results/bandit_summary.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    print(table.groupby(["dataset", "algorithm"])[["policy_reward_mean", "on_support"]].mean().to_string())


STAGES = {"bandit_train": train, "bandit_plot": plot, "bandit_summary": summary}

if __name__ == "__main__":
    a = stage.parser(__doc__)
    a.add_argument("stage", choices=list(STAGES))
    a.add_argument("--name")
    a.add_argument("--algo")
    args = a.parse_args()
    parts = [p for p in (args.name, args.algo) if p] or ["all"]
    stage.run(args.stage, args, log_file(args.stage, *parts), STAGES[args.stage],
              **({"algo": args.algo} if args.algo else {}))
