"""Milliseconds per evaluation action of every tilted row (diffrl.algos.tilted) beside its base
row's own action: one HalfCheetah state (obs 17, act 6), as the evaluate stage acts, on CPU with
one thread and on CUDA when present. Weights are untrained (the cost of a sampler does not depend
on them); sizes and tilt settings are params.yaml's, plus a few tilts on each row:

    python benchmarks/bench_tilts.py                    # table to stdout
    python benchmarks/bench_tilts.py --json out.jsonl   # also one JSON line per measurement

The registry's `act_s` of the tilted rows (diffrl/algos/__init__.py), which the cost plan and the
cluster requests use, come from its CPU figures at params.yaml's settings (studies/speed/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_steps import OBS, build  # noqa: E402  (the agents at their config's sizes)

# tilted row -> the bench_steps agent of its base row, and of the row whose critic tilts it
BASES = {"bc_tilt": ("bc", "iql"), "dql_tilt": ("dql_ql", None), "dtql_tilt": ("dtql", None),
         "eda_tilt": ("eda_align", None)}
# tilts measured besides params.yaml's: (label, overrides)
VARIANTS = [("lambda 0, 1 particle", {"tfg_lambda": 0.0, "num_particles": 1}),
            ("lambda 16, 1 particle", {"tfg_lambda": 16.0, "num_particles": 1}),
            ("lambda 0, 32 particles", {"tfg_lambda": 0.0, "num_particles": 32})]
MALA = ("lambda 16, MALA 4 steps, 1 particle", {"tfg_lambda": 16.0, "num_particles": 1, "mala_steps": 4})


def ms_per_action(act, device: str, calls: int, max_s: float) -> float:
    obs = np.random.default_rng(0).standard_normal((1, OBS)).astype(np.float32)  # one state, as a batch
    for _ in range(2):  # warm-up
        act(obs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0, n = time.perf_counter(), 0
    while n < calls and (n < 3 or time.perf_counter() - t0 < max_s):
        act(obs)  # returns a numpy action: the host sync the evaluation pays too
        n += 1
    sync()
    return (time.perf_counter() - t0) / n * 1000


def measure(device: str, calls: int, max_s: float):
    from diffrl import config
    from diffrl.algos.tilted import tilted_policy
    params = config.load(ROOT / "params.yaml")
    for row, (base, critic) in BASES.items():
        agent = build(base, device).eval()
        critic_agent = build(critic, device).eval() if critic else None
        gen = torch.Generator(device=device).manual_seed(0)
        yield {"row": base.split("_")[0], "tilt": "its own evaluation action", "device": device,
               "ms": ms_per_action(lambda o: agent.act(o, generator=gen), device, calls, max_s)}
        settings = [("params.yaml", {})] + VARIANTS + ([MALA] if row == "eda_tilt" else [])
        for label, overrides in settings:
            cfg = dataclasses.replace(params[row], **overrides)
            policy = tilted_policy(row, cfg, agent, critic_agent)
            gen = torch.Generator(device=device).manual_seed(0)
            if label == "params.yaml":
                label = f"params.yaml: lambda {cfg.tfg_lambda:g}, {cfg.num_particles} particles, MALA {cfg.mala_steps}"
            yield {"row": row, "tilt": label, "device": device,
                   "ms": ms_per_action(lambda o: policy.act(o, generator=gen), device, calls, max_s)}


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--calls", type=int, default=50, help="actions timed per setting (at most --max-s seconds)")
    a.add_argument("--max-s", type=float, default=10.0)
    a.add_argument("--json", help="also write one JSON line per measurement here")
    args = a.parse_args()
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = open(args.json, "w") if args.json else None
    print(f"{'row':<10} {'device':<6} {'ms/action':>10}  tilt")
    for device in devices:
        for r in measure(device, args.calls, args.max_s):
            print(f"{r['row']:<10} {r['device']:<6} {r['ms']:>10.1f}  {r['tilt']}", flush=True)
            if out:
                out.write(json.dumps({**r, "threads": 1, "torch": torch.__version__}) + "\n")
    if out:
        out.close()


if __name__ == "__main__":
    main()
