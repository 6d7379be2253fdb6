"""The tilts on the 2-D bandit toys: each offline row's trained policy sampled under a sweep of
inference-time tilts (diffrl.algos.tilted), where the effect on the sample cloud can be seen.

    python studies/tilts/tilt_bandit.py [--sets 8gaussians rings] [--rows bc dql eda] [--seeds 0 1 2]
        [--budget quick] [--lambdas 0 16 64 128] [--particles 1 32]

For every toy set and seed it trains each row as the bandit study does (diffrl.bandit.run_bandit:
pretraining included, params.yaml's sections at the budget's toy step counts; BC is tilted with the
critic of the `iql` row trained beside it), then draws 1000 actions from the untilted policy and
from each tilt of the sweep (the tilted row's params.yaml section with `tfg_lambda` and
`num_particles` replaced). Writes studies/tilts/results/bandit_tilts.csv (mean reward of the actions,
best and mean reward in the data, fraction on the data's support; per set, row, tilt and seed;
the untilted policy is tfg_lambda 0 with 1 particle, tilted False; a rerun replaces the rows of
its sets, rows and seeds and keeps the others) and one figure per set and row,
studies/tilts/results/bandit_{set}_{row}.png (all seeds' samples over the data, coloured by reward).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "studies/learning_curves"))
from learning_curves import machine  # noqa: E402

N_SAMPLES = 1000


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--sets", nargs="+", default=["8gaussians", "rings"])
    a.add_argument("--rows", nargs="+", default=["bc", "dql", "eda"])
    a.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a.add_argument("--budget", default="quick")
    a.add_argument("--lambdas", nargs="+", type=float, default=[0, 16, 64, 128])
    a.add_argument("--particles", nargs="+", type=int, default=[1, 32])
    a.add_argument("--out", default=str(HERE / "results"))
    args = a.parse_args()

    from diffrl import config
    from diffrl.algos import PRETRAINED
    from diffrl.algos.tilted import tilted_policy
    from diffrl.bandit import bandit_metrics, plot_bandit, run_bandit
    from diffrl.utils import atomic_path, seed_everything

    torch.set_num_threads(1)
    params = config.load(ROOT / "params.yaml", [f"budget={args.budget}"])
    budget = params["budgets"][args.budget]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv, rows, tilts = out / "bandit_tilts.csv", [], {}  # tilts: panel label -> (row, lambda, particles)
    for name in args.sets:
        clouds, data = [], None
        for seed in args.seeds:
            t0, cloud, iql_agent = time.time(), {}, None
            for row in args.rows:
                configs = {s: params[s] for s in (*PRETRAINED.get(row, ()), row)}
                seed_everything(seed, True)
                run = run_bandit(name, row, seed, configs, budget, N_SAMPLES, log=lambda *_: None)
                data, agent = run["data"], run["agent"]
                cloud[row] = run["actions"]
                critic = None
                if row == "bc":  # BC has no critic: the iql row's, trained beside it (the registry's critic_row)
                    if iql_agent is None:
                        seed_everything(seed, True)
                        iql_agent = run_bandit(name, "iql", seed, {"iql": params["iql"]}, budget, 1,
                                               log=lambda *_: None)["agent"]
                    critic = iql_agent
                for lam in args.lambdas:
                    for p in args.particles:
                        if lam == 0 and p == 1:
                            continue  # the untilted sampler itself (tests/test_tilts.py)
                        cfg = dataclasses.replace(params[f"{row}_tilt"], tfg_lambda=lam, num_particles=p)
                        policy = tilted_policy(f"{row}_tilt", cfg, agent, critic)
                        gen = torch.Generator().manual_seed(seed)
                        label = f"{row} λ={lam:g} N={p}"
                        tilts[label] = (row, lam, p)
                        cloud[label] = np.asarray(policy.act(np.zeros((N_SAMPLES, 1), np.float32), generator=gen))
            for r in bandit_metrics(name, seed, cloud, data):
                row, lam, p = tilts.get(r["algorithm"], (r["algorithm"], 0.0, 1))
                rows.append({**r, "row": row, "tfg_lambda": lam, "num_particles": p,
                             "tilted": r["algorithm"] in tilts})
            clouds.append(cloud)
            print(f"{name} seed {seed}: {time.time() - t0:.0f} s", flush=True)
        for row in args.rows:  # one figure per set and row: runs of other rows keep theirs
            plot_bandit(name, data, [{k: v for k, v in c.items() if k.split(" ")[0] == row} for c in clouds],
                        out / f"bandit_{name}_{row}.png", cols=len(args.lambdas) * len(args.particles))
        df = pd.DataFrame(rows).drop(columns="algorithm")
        df["budget"], df["machine"] = args.budget, machine()
        if csv.exists():  # keep the other rows and sets of earlier runs
            old = pd.read_csv(csv)
            keep = ~(old["dataset"].isin(df["dataset"]) & old["row"].isin(df["row"]) & old["seed"].isin(df["seed"]))
            df = pd.concat([old[keep], df], ignore_index=True)
        with atomic_path(csv) as tmp:
            df.to_csv(tmp, index=False, float_format="%.4f")
    print(f"wrote {csv} and {len(args.sets) * len(args.rows)} figure(s) under {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
