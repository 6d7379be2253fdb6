"""Milliseconds per gradient step (batch 256, HalfCheetah shapes: obs 17, act 6) and peak memory
of every offline algorithm, on CPU with 1 and 2 threads and on CUDA when present. `eda_support`
is EDA's one-off cost before alignment: milliseconds per dataset state to draw its 16 behaviour
samples (15-step DPM-Solver) and their labels.

    python benchmarks/bench_steps.py                 # all algorithms, table to stdout
    python benchmarks/bench_steps.py --algos dql_ql  # a subset
Each (algorithm, device, threads) runs in its own process so peak memory is its own.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

OBS, ACT, BATCH = 17, 6, 256


def build(name, device):
    from diffrl.algos.iql import IQL, IQLConfig
    if name == "sac":
        from diffrl.algos.sac import SAC, SACConfig
        return SAC(OBS, ACT, SACConfig(), device)
    if name == "iql":
        return IQL(OBS, ACT, IQLConfig(), device)
    if name == "bc":
        from diffrl.algos.bc import BCConfig, DiffusionBC
        return DiffusionBC(OBS, ACT, BCConfig(), device)
    if name.startswith("dql_"):
        from diffrl.algos.dql import DiffusionQL, DQLConfig
        return DiffusionQL(OBS, ACT, DQLConfig(variant=name[4:]), device, total_steps=1_000_000)
    if name == "dtql":
        from diffrl.algos.dtql import DTQL, DTQLBehaviorConfig, DTQLConfig
        return DTQL.from_configs(OBS, ACT, DTQLConfig(), DTQLBehaviorConfig(), IQLConfig(layer_norm=True), device)
    if name == "dtql_behavior":
        from diffrl.algos.dtql import DTQLBehaviorConfig, EDMBehavior
        return EDMBehavior(OBS, ACT, DTQLBehaviorConfig(), device)
    if name == "eda_behavior":
        from diffrl.algos.eda import BottleneckBehavior, EDABehaviorConfig
        return BottleneckBehavior(OBS, ACT, EDABehaviorConfig(), device)
    if name in ("eda_align", "eda_support"):
        from diffrl.algos.eda import EDAAlign, EDABehaviorConfig, EDAConfig
        return EDAAlign.from_configs(OBS, ACT, EDAConfig(), EDABehaviorConfig(), IQLConfig(), device)
    raise SystemExit(f"unknown algorithm {name}")


def one(name, device, threads, steps):
    import torch
    torch.set_num_threads(threads)
    agent = build(name, device)
    batch_size = getattr(agent.cfg, "batch_size", BATCH) if name == "eda_behavior" else BATCH
    g = torch.Generator(device=device).manual_seed(0)
    data = {"obs": torch.randn(batch_size, OBS, device=device), "action": torch.rand(batch_size, ACT, device=device) * 2 - 1,
            "reward": torch.randn(batch_size, device=device), "next_obs": torch.randn(batch_size, OBS, device=device),
            "terminal": torch.zeros(batch_size, device=device)}
    step = lambda: agent.update(data, g)  # noqa: E731
    if name in ("eda_align", "eda_support"):  # alignment draws states from the support set
        from diffrl.data import ReplayBuffer
        states = ReplayBuffer(OBS, ACT, batch_size, device)
        states.add(**{k: v.cpu() for k, v in data.items()})
        agent.prepare(states, g)
        if name == "eda_support":
            step = lambda: agent.prepare(states, g)  # noqa: E731
    for _ in range(3):  # warm-up
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    ms = (time.perf_counter() - t0) / steps * 1000
    if name == "eda_support":  # per state
        ms, batch_size = ms / batch_size, agent.cfg.num_samples
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"algo": name, "device": device, "threads": threads, "batch": batch_size, "ms_per_step": ms, "peak_mb": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default="sac,iql,bc,dql_ql,dql_qg,dql_edp,dql_eg_ood,dtql_behavior,dtql,eda_behavior,eda_align,eda_support")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--one", nargs=3, metavar=("ALGO", "DEVICE", "THREADS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], int(a.one[2]), a.steps)))
        return
    import torch
    runs = [(n, "cpu", t) for n in a.algos.split(",") for t in (1, 2)]
    if torch.cuda.is_available():
        runs += [(n, "cuda", 1) for n in a.algos.split(",")]
    print(f"{'algorithm':<14} {'device':<6} {'threads':>7} {'batch':>6} {'ms/step':>9} {'peak MB':>8}")
    for n, dev, t in runs:
        steps = 3 if n.startswith("eda_") and dev == "cpu" else a.steps
        out = subprocess.run([sys.executable, __file__, "--one", n, dev, str(t), "--steps", str(steps)],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{n:<14} {dev:<6} {t:>7} failed: {out.stderr.strip().splitlines()[-1][:80]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{n:<14} {dev:<6} {t:>7} {r['batch']:>6} {r['ms_per_step']:>9.1f} {r['peak_mb']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
