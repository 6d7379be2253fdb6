"""Chaos run: the graph under repeated SIGKILLs ends equal, bit for bit, to an uninterrupted run.

    python studies/chaos/chaos.py [--kills 30] [--seed 0] [--front snakemake|dvc]
        [--rows bc iql dql] [--seeds 0 1] [--steps 2000] [--keep DIR]

Builds two copies of the project. In the first it runs a small graph (a random-quality
HalfCheetah dataset, small nets, `--steps` gradient steps per row and pretraining stage) to the
summary table while a killer sends SIGKILL, at seeded random times, to a random process of the
run: the scheduler (Snakemake, or `dvc repro`), the shell it started a job with, or the job.
After each kill it checks that every process of the killed run ends within seconds (a job whose
scheduler died stops by itself: diffrl/scheduler.py) and recovers as docs/troubleshooting.md
says: it runs the same command again. In the second copy it runs the graph once, uninterrupted.
Then every per-seed evaluation and every trained model must be equal bit for bit, and the summary
must list every declared seed. Each kill (time, victim) and the outcome are printed as JSON lines;
the same seed replays the same kill times and victim choices. tests/test_chaos.py runs a small
version inside the suite.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import ENV1, copy_project  # noqa: E402  (the suite's fresh-copy helper)

CONFIG_FILE = "chaos_config.yaml"
TASK = "halfcheetah-random"  # a random-quality dataset: no SAC data agent to train


def graph_config(rows: list[str], seeds: list[int], steps: int) -> dict:
    """The small graph, as a config merged over params.yaml."""
    return {"budget": "smoke", "seeds": seeds, "algorithms": rows, "stats": {"baseline": rows[0]},
            "tasks": {TASK: {}},
            "budgets": {"smoke": {"dataset_episodes": 2, "offline_steps": steps, "iql_steps": steps,
                                  "dtql_steps": steps, "dtql_pretrain_steps": steps, "eda_critic_steps": steps,
                                  "eval_episodes": 1, "curve_episodes": 1}},
            "iql": {"hidden": 64, "policy_hidden": 64}, "bc": {"hidden": 64}, "dql": {"hidden": 64}}


def prepare(project: Path, front: str, cfg: dict) -> list[str]:
    """Write the graph's config into `project`; return the command that builds its summary."""
    (project / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    if front == "snakemake":
        return ["snakemake", "--cores", "2", "--configfile", CONFIG_FILE, "--", f"results/{TASK}_summary.csv"]
    from snakemake.utils import update_config
    params = yaml.safe_load((project / "params.yaml").read_text())
    update_config(params, cfg)
    # its task alone (a config file adds to params.yaml's tasks, and dvc repro would build them all)
    params["tasks"] = cfg["tasks"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "diffrl.params", "--regenerate"], cwd=project, check=True,
                   capture_output=True, text=True, env=ENV1)
    return ["dvc", "repro", f"summary@{TASK}"]


def _role(p: psutil.Process, top: int) -> str:
    if p.pid == top:
        return "scheduler"
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "gone"
    if any("stages/" in c for c in cmd):
        return "job shell" if Path(cmd[0]).name in ("bash", "sh") else "job"
    return "helper " + Path(cmd[0]).name if cmd else "helper"


def _tree(top: psutil.Process) -> list[psutil.Process]:
    try:
        return [top, *sorted(top.children(recursive=True), key=lambda p: (p.create_time(), p.pid))]
    except psutil.NoSuchProcess:
        return []


def run_under_kills(cmd: list[str], cwd: Path, kills: int, seed: int, env: dict = ENV1, window=(1.5, 7.0),
                    log=sys.stdout, timeout_s: float = 1800) -> list[dict]:
    """Run `cmd` in `cwd` until it succeeds, SIGKILLing a random process of it `kills` times, each a
    uniform `window` seconds after an attempt starts; returns the kills made. Fails when an attempt
    that was not killed fails, or when a killed run's processes outlive the kill by 5 s."""
    rng, done, t0 = random.Random(seed), [], time.time()
    with open(cwd / "chaos.log", "a") as out:
        while True:
            assert time.time() - t0 < timeout_s, f"the chaos run exceeded {timeout_s} s"
            attempt = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            top, killed, procs = psutil.Process(attempt.pid), None, []
            if len(done) < kills:
                delay, pick = rng.uniform(*window), rng.random()  # drawn every attempt: a replay draws the same
                try:
                    attempt.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    procs = _tree(top)
                    victim = procs[int(pick * len(procs))]
                    killed = {"kill": len(done) + 1, "at_s": round(delay, 2), "victim": _role(victim, top.pid),
                              "processes": len(procs)}
                    victim.kill()
                    print(json.dumps(killed), file=log, flush=True)
                    done.append(killed)
            rc = attempt.wait(timeout=timeout_s)
            if killed is None:
                assert rc == 0, f"`{' '.join(cmd[:2])}` failed without a kill (exit {rc}): see {cwd / 'chaos.log'}"
                return done
            # what the killed run started ends by itself (the stages' watchdog), as a group kill would end it
            deadline = time.time() + 5
            while (left := [p for p in procs if _running(p)]) and time.time() < deadline:
                time.sleep(0.1)
            assert not left, f"processes outlived the killed run: {[' '.join(p.cmdline())[:100] for p in left]}"


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _flatten(obj, prefix="") -> dict:
    """The tensors and numbers of a checkpoint or result by path, wall-clock fields left out."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() if not any(w in str(key) for w in ("wall", "started", "per_s"))
                for k, v in _flatten(val, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _flatten(val, f"{prefix}{i}.").items()}
    if isinstance(obj, torch.Tensor):
        return {prefix: (str(obj.dtype), tuple(obj.shape), obj.detach().cpu().numpy().tobytes())}
    return {prefix: obj}


def per_seed_results(project: Path) -> dict:
    """Every per-seed evaluation and every trained model of the graph, keyed by file."""
    res = {}
    for f in sorted(project.glob(f"runs/{TASK}/eval/*/seed*.json")):
        res[str(f.relative_to(project))] = _flatten(json.loads(f.read_text()))
    for f in sorted(project.glob(f"runs/{TASK}/*/seed*/model.pt")):
        res[str(f.relative_to(project))] = _flatten(torch.load(f, weights_only=False))
    return res


def compare(chaos: Path, calm: Path, cfg: dict) -> dict:
    """Equal per-seed results and a summary with every seed; a dict describing what matched."""
    a, b = per_seed_results(chaos), per_seed_results(calm)
    assert a.keys() == b.keys(), f"different outputs: {sorted(a.keys() ^ b.keys())}"
    differ = [f for f in a if a[f] != b[f]]
    assert not differ, f"differ from the uninterrupted run: {differ}"
    table = pd.read_csv(chaos / f"results/{TASK}_summary.csv").set_index("algorithm")
    assert list(table.index) == cfg["algorithms"] and (table["n_seeds"] == len(cfg["seeds"])).all(), table
    return {"files_equal": len(a), "evaluations": sum("eval/" in f for f in a), "rows": list(table.index)}


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--kills", type=int, default=30)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--front", choices=["snakemake", "dvc"], default="snakemake")
    a.add_argument("--rows", nargs="+", default=["bc", "iql", "dql"])
    a.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    a.add_argument("--steps", type=int, default=2000)
    a.add_argument("--window", nargs=2, type=float, default=[1.5, 10.0], help="seconds after an attempt starts")
    a.add_argument("--keep", help="build the two projects in this folder and keep them")
    args = a.parse_args()
    cfg = graph_config(args.rows, args.seeds, args.steps)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="chaos-"))
    env = {**ENV1, "DIFFRL_CHECKPOINT_EVERY": "100"}
    print(json.dumps({"seed": args.seed, "kills": args.kills, "front": args.front, "config": cfg}), flush=True)
    try:
        runs = {}
        for name in ("chaos", "calm"):
            project = copy_project(base / name)
            cmd = prepare(project, args.front, cfg)
            if args.front == "dvc":
                subprocess.run(["dvc", "init", "-q", "-f"] if not (project / ".dvc").exists() else ["true"],
                               cwd=project, check=True)
            t = time.time()
            kills = run_under_kills(cmd, project, args.kills if name == "chaos" else 0, args.seed, env,
                                    tuple(args.window))
            runs[name] = {"wall_s": round(time.time() - t), "kills": len(kills),
                          "victims": sorted({k["victim"] for k in kills})}
        print(json.dumps({"outcome": "equal", **compare(base / "chaos", base / "calm", cfg), "runs": runs}))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
