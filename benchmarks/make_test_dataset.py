"""Build the small HalfCheetah-v5 "medium" fixture of tests/halfcheetah_learning.py.

It uses the pipeline's own generator (diffrl.generate.train_data_agent: a SAC data agent trained
until its evaluation score reaches the target; then diffrl.generate.make_dataset: its medium policy
rolled out stochastically and written as a real Minari dataset by diffrl.data.write_minari). The
data is locally generated, NOT D4RL data. Run from the repository root, single-threaded
(deterministic on CPU):

    OMP_NUM_THREADS=1 python benchmarks/make_test_dataset.py

It writes tests/data/halfcheetah_medium_small/ (the Minari dataset plus info.json with the SAC
env steps, the agent's score, the dataset's mean normalised score, episodes and seed).
The defaults below are the ones that produced the committed fixture, with the generator of
commit 58273bf (tests/data/README.md); the current generator writes another dataset of the same recipe.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "halfcheetah_medium_small")
    ap.add_argument("--sac-steps", type=int, default=60_000, help="SAC env-step budget (cap)")
    ap.add_argument("--sac-warmup", type=int, default=5_000, help="uniform-random warm-up env steps")
    ap.add_argument("--sac-eval-every", type=int, default=5_000, help="SAC evaluation period (env steps)")
    ap.add_argument("--medium-target", type=float, default=25.0,
                    help="stop SAC once its evaluation score reaches this (the product uses 33)")
    ap.add_argument("--episodes", type=int, default=20, help="rolled-out episodes (1000 steps each)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from diffrl.algos.sac import SACConfig
    from diffrl.generate import make_dataset, train_data_agent
    from diffrl.tasks import parse
    from diffrl.utils import seed_everything

    seed_everything(args.seed, True)
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    tmp, agent_dir = out.parent / f".{out.name}.tmp", out.parent / f".{out.name}.agent"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(agent_dir, ignore_errors=True)
    t0 = time.time()
    # the data agent stops at its medium point: a medium dataset needs no expert policy
    agent = train_data_agent("halfcheetah", agent_dir, sac_cfg=SACConfig(), sac_steps=args.sac_steps,
                             sac_warmup=args.sac_warmup, sac_eval_every=args.sac_eval_every,
                             medium_target=args.medium_target, seed=args.seed, device="cpu", stop_at_medium=True)
    info = make_dataset(parse("halfcheetah-medium"), tmp, agent_dir=agent_dir, episodes=args.episodes, seed=args.seed,
                        device="cpu")
    shutil.rmtree(agent_dir)
    info.update(sac_env_steps=agent["medium"]["env_steps"], agent_score=agent["medium"]["score"],
                target_reached=agent["target_reached"], sac_evaluations=agent["evaluations"])
    info.update(source="generate", medium_target_score=args.medium_target, sac_steps_cap=args.sac_steps,
                sac_warmup=args.sac_warmup, sac_eval_every=args.sac_eval_every, sac_config="SACConfig() defaults",
                wall_s=round(time.time() - t0, 1), torch_version=torch.__version__,
                note="Locally generated HalfCheetah-v5 medium data (SAC behaviour agent, diffrl pipeline). "
                     "NOT D4RL data.",
                command="OMP_NUM_THREADS=1 python benchmarks/make_test_dataset.py " + " ".join(sys.argv[1:]))
    (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    tmp.rename(out)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
