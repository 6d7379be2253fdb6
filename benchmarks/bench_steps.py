"""Milliseconds per gradient step (batch 256, HalfCheetah shapes: obs 17, act 6) and peak memory
of every offline algorithm, on CPU with 1 and 2 threads and on CUDA when present. `eda_support`
is EDA's one-off cost before alignment: milliseconds per dataset state to draw its 16 behaviour
samples (15-step DPM-Solver) and their labels.

    python benchmarks/bench_steps.py                 # all algorithms, table to stdout
    python benchmarks/bench_steps.py --algos dql_ql  # a subset
Each (algorithm, device, threads) runs in its own process so peak memory is its own.

Distance to the limit: every run also counts the step's matrix-multiply FLOPs (forward and
backward, every mm/addmm/bmm/baddbmm the step dispatches: `gflop`) and reports the achieved rate
(`gflops`) beside `sgemm_gflops`, the rate this machine reaches when the step's own matrix
multiplies (the same shapes, in the same order, at the same thread count) run alone. `of_sgemm`
= gflops / sgemm_gflops: 1.0 would mean the step does nothing but its matrix multiplies at
this machine's matmul speed; the rest of the time is elementwise work, the optimiser and overhead.
"""
import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's diffrl, as the stages do

MATMULS = ("mm", "addmm", "bmm", "baddbmm")

OBS, ACT, BATCH = 17, 6, 256


def section_of(name: str) -> str:
    """The params.yaml section a benchmark name times: an offline or pretraining section by its own
    name, a Diffusion-QL variant as dql_VARIANT, EDA's alignment step as eda_align and its one-off
    support-set sampler as eda_support (the names ../shared/anchors/speed_ratio.py passes)."""
    from diffrl.algos import DQL_VARIANTS, REGISTRY
    named = {**{f"dql_{v}": row for row, v in DQL_VARIANTS.items()}, "eda_align": "eda", "eda_support": "eda"}
    section = named.get(name, name)
    if section not in REGISTRY or REGISTRY[section].kind not in ("dataset", "critic", "behavior", "offline"):
        raise SystemExit(f"unknown algorithm {name}: an offline or pretraining section of diffrl.algos.REGISTRY, "
                         f"dql_VARIANT, eda_align or eda_support")
    return section


def build(name, device):
    """The agent of a section with params.yaml's values, built through the registry as the training
    stage builds it (a composite row gets fresh parts from its own critic and behaviour sections)."""
    from diffrl import config
    from diffrl.algos import PRETRAINED, extra_args
    from diffrl.offline import build_agent
    section = section_of(name)
    sections = [section, *PRETRAINED.get(section, ())]
    validated = config.load(sections=sections)

    def meta(s):
        extra = extra_args(s, total_steps=1_000_000, reward_scale=1.0, support_states=0)
        return {"section": s, "config": dataclasses.asdict(validated[s]), "extra": extra}
    parts = {kind: build_agent(meta(s), OBS, ACT, device) for kind, s in zip(("critic", "behavior"), sections[1:])}
    return build_agent(meta(section), OBS, ACT, device, parts or None)


def matmul_shapes(step) -> list[tuple[int, int, int, int]]:
    """(batch, m, k, n) of every matrix multiply one call of `step` dispatches, forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            op = func.overloadpacket.__name__
            if op in MATMULS:
                a, b = (args[1], args[2]) if op.startswith(("add", "badd")) else (args[0], args[1])
                batch = a.shape[0] if a.dim() == 3 else 1
                self.shapes.append((batch, a.shape[-2], a.shape[-1], b.shape[-1]))
            return func(*args, **(kwargs or {}))

    with Record() as rec:
        step()
    return rec.shapes


def seconds_per_call(fn, repeats: int, device, warmup: int = 1) -> float:
    """Seconds one call of `fn` takes, averaged over `repeats` calls after `warmup` (CUDA synchronised)."""
    import torch
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def sgemm_seconds(shapes, device, repeats: int = 5) -> float:
    """Seconds the matrix multiplies `shapes` take alone, in order, on random contiguous operands."""
    import torch
    ops = [(torch.randn(b, m, k, device=device), torch.randn(b, k, n, device=device)) if b > 1
           else (torch.randn(m, k, device=device), torch.randn(k, n, device=device)) for b, m, k, n in shapes]
    return seconds_per_call(lambda: [torch.matmul(x, y) for x, y in ops], repeats, device)


def one(name, device, threads, steps, compile_mode="none"):
    import torch

    from diffrl.nets import compile_networks
    torch.set_num_threads(threads)
    agent = build(name, device)
    batch_size = getattr(agent.cfg, "batch_size", BATCH) if name == "eda_behavior" else BATCH
    g = torch.Generator(device=device).manual_seed(0)
    data = {"obs": torch.randn(batch_size, OBS, device=device), "action": torch.rand(batch_size, ACT, device=device) * 2 - 1,
            "reward": torch.randn(batch_size, device=device), "next_obs": torch.randn(batch_size, OBS, device=device),
            "terminal": torch.zeros(batch_size, device=device)}
    step = lambda: agent.update(data, g)  # noqa: E731
    if name in ("eda_align", "eda_support"):  # alignment draws states from the support set
        from diffrl.buffer import ReplayBuffer
        states = ReplayBuffer(OBS, ACT, batch_size, device)
        states.add(**{k: v.cpu() for k, v in data.items()})
        agent.prepare(states, g)
        if name == "eda_support":
            step = lambda: agent.prepare(states, g)  # noqa: E731
    # the matrix multiplies of one step, recorded eagerly (a compiled step has the same ones)
    shapes = matmul_shapes(step) if name != "eda_support" else []
    compile_networks(agent, compile_mode)
    for _ in range(3):  # warm-up (compiled networks compile here)
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
    out = {"algo": name, "device": device, "threads": threads, "batch": batch_size, "compile": compile_mode,
           "ms_per_step": ms, "peak_mb": peak}
    if shapes:  # eda_support is a sampler, not a gradient step
        flop = sum(2 * b * m * k * n for b, m, k, n in shapes)
        alone = sgemm_seconds(shapes, device, repeats=2 if name.startswith("eda_") else 5)
        out.update(gflop=flop / 1e9, gflops=flop / 1e9 / (ms / 1000), sgemm_gflops=flop / 1e9 / alone,
                   of_sgemm=(flop / (ms / 1000)) / (flop / alone))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default="sac,iql,bc,dql_ql,dql_qg,dql_edp,dql_eg_ood,dtql_behavior,dtql,eda_behavior,eda_align,eda_support")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", help="append each run's record (one JSON line) to this file")
    p.add_argument("--compile", default=os.environ.get("DIFFRL_BENCH_COMPILE", "none"),
                   help="params.yaml's `compile` for the networks (none = eager; default: torch.compile). The "
                   "environment variable DIFFRL_BENCH_COMPILE sets it where a harness calls --one")
    p.add_argument("--one", nargs=3, metavar=("ALGO", "DEVICE", "THREADS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], int(a.one[2]), a.steps, a.compile)))
        return
    import torch
    runs = [(n, "cpu", t) for n in a.algos.split(",") for t in (1, 2)]
    if torch.cuda.is_available():
        runs += [(n, "cuda", 1) for n in a.algos.split(",")]
    print(f"{'algorithm':<14} {'device':<6} {'threads':>7} {'batch':>6} {'ms/step':>9} {'peak MB':>8} "
          f"{'GFLOP':>7} {'GFLOP/s':>8} {'sgemm GFLOP/s':>13} {'of sgemm':>8}")
    for n, dev, t in runs:
        steps = 3 if n.startswith("eda_") and dev == "cpu" else a.steps
        out = subprocess.run([sys.executable, __file__, "--one", n, dev, str(t), "--steps", str(steps),
                              "--compile", a.compile],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{n:<14} {dev:<6} {t:>7} failed: {out.stderr.strip().splitlines()[-1][:80]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        flops = (f" {r['gflop']:>7.2f} {r['gflops']:>8.1f} {r['sgemm_gflops']:>13.1f} {r['of_sgemm']:>8.2f}"
                 if "gflop" in r else "")
        print(f"{n:<14} {dev:<6} {t:>7} {r['batch']:>6} {r['ms_per_step']:>9.1f} {r['peak_mb']:>8.0f}{flops}",
              flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
