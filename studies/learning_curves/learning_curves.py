"""Learning-curve study: normalised score against gradient steps for the offline rows, with the
pipeline's own training code (diffrl.offline.train_run) and the hyperparameters of params.yaml.

    python studies/learning_curves/learning_curves.py --dataset data/halfcheetah-medium/dataset --seeds 0 1 2 \
        --rows bc dql qg edp eg_ood iql dtql eda --steps 20000 --eval-every 2500 --episodes 10
    python studies/learning_curves/learning_curves.py --plot-only

Each (row, seed) run appends its evaluation points to the CSV (`--out`) when it finishes; a rerun
skips the runs already there, so a study can be spread over several runs. DTQL and EDA first
train their own critic and behaviour (`--pretrain-steps`, EDA's energy behaviour
`--energy-behavior-steps` at batch 2048); the curve's steps are those of the final stage and the
CSV states the pretraining steps. Intermediate points use the learning-curve seeds and the last
one the final-evaluation seeds of the pipeline, `--episodes` full episodes each. The trained runs
go to a temporary folder, or with `--keep DIR` stay in DIR (a model.pt each), to be evaluated
further, for example under an inference-time tilt.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ["algorithm", "seed", "step", "score", "return", "final_stage_steps", "critic_steps", "behavior_steps",
           "wall_s", "dataset", "machine"]


def done_runs(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    with path.open() as f:
        return {(r["algorithm"], int(r["seed"])) for r in csv.DictReader(f)}


def append_rows(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:  # one write per finished run: a killed study loses only the run in flight
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        w.writerows(rows)


def run_one(row: str, seed: int, args, params, work: Path) -> list[dict]:
    from diffrl.algos import PRETRAINED
    from diffrl.envs import final_seed
    from diffrl.offline import describe_dataset, load_agent, train_run
    from diffrl.train import eval_score
    from diffrl.utils import seed_everything

    def train(section: str, steps: int, pretrained=None) -> tuple[Path, dict]:
        seed_everything(seed, True)
        out = work / section / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        info = train_run(section, params[section], env_name=args.env, dataset_dir=args.dataset, out_dir=out,
                         seed=seed, steps=steps, eval_every=args.eval_every, curve_episodes=args.episodes,
                         device="cpu", resume_path=None, budget="learning-curve study", pretrained=pretrained,
                         support_states=args.support_states)
        return out, info

    critic_steps = behavior_steps = 0
    pretrained, pre_wall = None, 0.0
    if row in PRETRAINED:
        critic, behavior = PRETRAINED[row]
        critic_steps = args.pretrain_steps
        behavior_steps = args.energy_behavior_steps if behavior == "eda_behavior" else args.pretrain_steps
        c_dir, c_info = train(critic, critic_steps)
        b_dir, b_info = train(behavior, behavior_steps)
        pretrained = {"critic": str(c_dir), "behavior": str(b_dir)}
        pre_wall = c_info["wall_s"] + b_info["wall_s"]
    steps = args.align_steps if row == "eda" else args.steps
    out, info = train(row, steps, pretrained)
    agent, _ = load_agent(out)
    ret, score = eval_score(agent, args.env, args.episodes, final_seed(seed), info["reference_scores"])
    points = info["curve"] + [{"step": steps, "return": ret, "score": score}]
    common = {"algorithm": row, "seed": seed, "final_stage_steps": steps, "critic_steps": critic_steps,
              "behavior_steps": behavior_steps, "wall_s": round(pre_wall + info["wall_s"], 1),
              "dataset": describe_dataset(args.dataset), "machine": machine()}
    return [{**common, "step": p["step"], "score": round(p["score"], 3), "return": round(p["return"], 2)}
            for p in points]


def machine() -> str:
    import torch
    from diffrl import utils
    cpu = utils.cpu_name()
    compiled = "" if utils.COMPILE_MODE == "none" else f", compile {utils.COMPILE_MODE}"
    return f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} thread(s){compiled}"


def plot(path: Path, png: Path, title: str) -> None:
    import pandas as pd

    from diffrl.stats import plot_curves
    df = pd.read_csv(path)
    df = df.assign(step_unit="grad")
    seeds = df.groupby("algorithm", sort=False)["seed"].nunique()
    per_row = ", ".join(f"{row} {n}" for row, n in seeds.items())
    plot_curves(df, png, f"{title}; seeds per row: {per_row} (mean; 95% CI over seeds where > 1)")


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--env", default="halfcheetah")
    a.add_argument("--dataset", default="data/halfcheetah-medium/dataset")
    a.add_argument("--params", default=str(ROOT / "params.yaml"))
    a.add_argument("--rows", nargs="+", default=["bc", "dql", "qg", "edp", "eg_ood", "iql", "dtql", "eda"])
    a.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a.add_argument("--steps", type=int, default=20000, help="gradient steps of every row's final stage")
    a.add_argument("--align-steps", type=int, default=2000, help="EDA alignment steps")
    a.add_argument("--pretrain-steps", type=int, default=20000, help="DTQL/EDA critic and DTQL behaviour steps")
    a.add_argument("--energy-behavior-steps", type=int, default=2500, help="EDA energy behaviour steps (batch 2048)")
    a.add_argument("--support-states", type=int, default=5000, help="EDA support states (align_support_states)")
    a.add_argument("--eval-every", type=int, default=2500)
    a.add_argument("--episodes", type=int, default=10)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--compile", default="none", choices=("none", "default", "max-autotune"),
                   help="params.yaml's `compile` for every run (default: eager, as the pipeline's default)")
    a.add_argument("--out", default=str(HERE / "results/halfcheetah_curves.csv"))
    a.add_argument("--keep", default=None, metavar="DIR",
                   help="keep the trained runs in DIR/{section}/seed{seed} (each with its model.pt, which "
                        "diffrl.offline.load_agent loads) instead of a temporary folder")
    a.add_argument("--plot-only", action="store_true")
    args = a.parse_args()
    out = Path(args.out)
    png = out.with_suffix(".png")
    title = f"{args.env}: offline rows, score vs gradient steps of the final stage"
    if args.plot_only:
        plot(out, png, title)
        return

    import torch

    from diffrl import config
    from diffrl.utils import run_device
    torch.set_num_threads(args.threads)
    run_device({"device": "cpu", "compile": args.compile, "tf32": False})
    params = config.load(args.params)
    if not (Path(args.dataset) / "info.json").exists():
        sys.exit(f"error: {args.dataset} is not a built dataset: run `snakemake --cores 1 {args.dataset}` first")
    have = done_runs(out)
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="curves-") as tmp:
        for seed in args.seeds:
            for row in args.rows:
                if (row, seed) in have:
                    continue
                t0 = time.time()
                rows = run_one(row, seed, args, params, Path(tmp))
                append_rows(out, rows)
                print(json.dumps({"row": row, "seed": seed, "final": rows[-1]["score"],
                                  "wall_s": round(time.time() - t0)}), flush=True)
                plot(out, png, title)


if __name__ == "__main__":
    main()
