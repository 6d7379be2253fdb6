"""EDA's trained policy evaluated under other settings of its own sampler, without retraining.

    python studies/tilts/eda_samplers.py [--seeds 0 1 2] [--out studies/tilts/results/halfcheetah_eda_samplers.csv]
        --variant '{"solver": "dpm++2s", "skip_type": "time"}' [--variant '{"sample_steps": 50}' ...]

Loads each seed's `eda` run (runs/halfcheetah-medium/eda/seed{s}, e.g. trained by studies/tilts/tilt_halfcheetah.py
under studies/tilts/eda_ours.yaml), replaces sampler fields of its behaviour config (`sample_steps`,
`solver`, `solver_order`, `skip_type`, `clip_x0`: diffrl/algos/eda.py, EDABehaviorConfig) and evaluates it
as the evaluate stage does: `--episodes` full episodes on the final-evaluation episode seeds, one
thread, with one policy sample per state (`eval_samples` 1, so that only the sampler differs; `{}` is
the run's own sampler). Appends one line per seed and variant to the CSV.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
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
SAMPLER_FIELDS = {"sample_steps", "solver", "solver_order", "skip_type", "clip_x0"}


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a.add_argument("--variant", action="append", required=True, help="JSON object of sampler fields")
    a.add_argument("--episodes", type=int, default=10)
    a.add_argument("--out", default=str(HERE / "results/halfcheetah_eda_samplers.csv"))
    args = a.parse_args()
    variants = [json.loads(v) for v in args.variant]
    for v in variants:  # before any evaluation
        if not set(v) <= SAMPLER_FIELDS:
            raise SystemExit(f"error: --variant {json.dumps(v)}: only {', '.join(sorted(SAMPLER_FIELDS))} "
                             "are sampler fields")

    from diffrl.envs import evaluate, final_seed, normalized_score
    from diffrl.offline import describe_dataset, load_agent
    from diffrl.train import policy_fn
    from diffrl.utils import read_json, set_threads
    set_threads(1)
    who, data = machine(), describe_dataset(str(ROOT / f"data/{TASK}/dataset"))
    lines = []
    for seed in args.seeds:
        run = ROOT / f"runs/{TASK}/eda/seed{seed}"
        for v in variants:
            agent, _ = load_agent(run, "cpu")
            agent.cfg = dataclasses.replace(agent.cfg, eval_samples=1)
            agent.behavior.cfg = dataclasses.replace(agent.behavior.cfg, **v)
            c = agent.behavior.cfg
            t0, ep = time.time(), final_seed(seed)
            returns = evaluate(policy_fn(agent, ep), ENV, args.episodes, ep)
            score = float(np.mean(normalized_score(ENV, returns, read_json(run / "train.json")["reference_scores"])))
            lines.append({"seed": seed, "variant": json.dumps(v), "solver": c.solver, "skip_type": c.skip_type,
                          "sample_steps": c.sample_steps, "clip_x0": c.clip_x0, "score": score,
                          "return": float(returns.mean()), "episodes": args.episodes,
                          "wall_s": round(time.time() - t0, 1), "machine": who, "data": data})
            print(f"seed {seed} {json.dumps(v)}: score {score:.2f}", flush=True)
    out = Path(args.out)
    new = pd.DataFrame(lines)
    if out.exists():
        new = pd.concat([pd.read_csv(out), new], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(out, index=False)


if __name__ == "__main__":
    main()
