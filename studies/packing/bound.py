"""How much seed packing can give on this CPU: per offline step of benchmarks/bench_steps.py and per
online update (online_sac, online_sdac, online_dpmd: one update of the online loop on a minibatch,
params.yaml's sizes), the step's time next to the time of its own matrix multiplies run alone (one
seed) and stacked over K seeds as batched multiplies (per seed), on one process at THREADS threads.

A packed step of K seeds does each matrix multiply of the step once, batched over the seeds, and
every other operation (elementwise work, the optimiser, the sampler's small ops, Python) once on K
times the data. Its time per seed is therefore at least the batched multiplies' time per seed, and
`bound` = step ms / (batched multiplies per seed + (step - multiplies alone) / K) is the most a
packed step could gain per seed: it assumes the non-matmul work costs nothing more for K seeds than
for one, which overstates the gain (that work is partly proportional to the data).

    python studies/packing/bound.py --threads 1 --json studies/packing/results/bound_cpu.jsonl
    python studies/packing/bound.py --device cuda --packs 1,4,16,64   # benchmarks/gpu_check.sh runs it
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

STEPS = ("sac,iql,bc,dql_ql,dql_qg,dql_edp,dql_eg_ood,dtql_behavior,dtql,eda_behavior,eda_align,"
         "online_sac,online_sdac,online_dpmd")
ONLINE_PREFIX = "online_"  # an online row's update (benchmarks/bench_online.py's agents), e.g. online_dpmd


def build_online(row: str, device: str):
    """An online row's agent as the online stage builds it (params.yaml's section), with HalfCheetah shapes."""
    from diffrl.online import make_online_agent, variant_config
    return make_online_agent(variant_config(row), "halfcheetah", 0, device)


def measure(name: str, threads: int, steps: int, packs: list[int], device: str = "cpu") -> dict:
    import torch
    from bench_steps import BATCH, OBS, ACT, build, matmul_shapes, seconds_per_call, sgemm_seconds
    torch.set_num_threads(threads)
    online = name.startswith(ONLINE_PREFIX)
    agent = build_online(name[len(ONLINE_PREFIX):], device) if online else build(name, device)
    batch = getattr(agent.cfg, "batch_size", BATCH) if name == "eda_behavior" or online else BATCH
    g = torch.Generator(device=device).manual_seed(0)
    data = {"obs": torch.randn(batch, OBS), "action": torch.rand(batch, ACT) * 2 - 1, "reward": torch.randn(batch),
            "next_obs": torch.randn(batch, OBS), "terminal": torch.zeros(batch)}
    data = {k: v.to(device) for k, v in data.items()}
    if name == "eda_align":
        from diffrl.buffer import ReplayBuffer
        states = ReplayBuffer(OBS, ACT, batch, device)
        states.add(**{k: v.cpu() for k, v in data.items()})
        agent.prepare(states, g)
    step = lambda: agent.update(data, g)  # noqa: E731
    shapes = matmul_shapes(step)
    ms = seconds_per_call(step, steps, device, warmup=3) * 1000
    repeats = 2 if name.startswith("eda_") and device == "cpu" else 5
    alone = sgemm_seconds(shapes, device, repeats) * 1000
    out = {"algo": name, "device": device, "threads": threads, "ms_per_step": ms, "matmul_ms": alone,
           "matmuls": len(shapes)}
    for k in packs:
        # the step's multiplies stacked over k seeds: one batched multiply each (for k = 1: the same as alone)
        per_seed = sgemm_seconds([(k * b, m, kk, n) for b, m, kk, n in shapes], device, repeats) * 1000 / k
        out[f"batched_matmul_ms_per_seed_k{k}"] = per_seed
        out[f"bound_k{k}"] = ms / (per_seed + max(ms - alone, 0.0) / k)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default=STEPS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--packs", default="1,3,8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="append each record (one JSON line) to this file")
    p.add_argument("--one", metavar="ALGO", help="measure one step and print its record as one JSON line")
    a = p.parse_args()
    packs = [int(k) for k in a.packs.split(",")]
    if a.one:
        print(json.dumps(measure(a.one, a.threads, a.steps, packs, a.device)))
        return
    print("| step | threads | ms/step | its matmuls alone ms | " + " | ".join(
        f"K={k}: batched matmuls ms/seed | bound" for k in packs) + " |")
    for name in a.algos.split(","):
        r = measure(name, a.threads, 3 if name.startswith("eda_") and a.device == "cpu" else a.steps, packs,
                    a.device)
        cells = " | ".join(f"{r[f'batched_matmul_ms_per_seed_k{k}']:.1f} | {r[f'bound_k{k}']:.2f}" for k in packs)
        print(f"| {name} | {a.threads} | {r['ms_per_step']:.1f} | {r['matmul_ms']:.1f} | {cells} |", flush=True)
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
