"""Speed of the online agents (the online rows of params.yaml; sac is the fork's SAC row) on a short run:

- loop: env steps/s and updates/s of the real training loop (train_online: num_envs envs stepped,
  EMA-policy action selection, one update per iteration), timed between updates after warm-up;
- update: updates/s of agent.update alone on a fixed batch (batch 256 unless --small);
- act: latency (ms, median) of choosing the action for ONE state (all num_particles particles in
  one sampler call, deterministic);
on CPU with 1 and 2 threads, and on CUDA when present. Defaults are the published sizes
(HalfCheetah shapes, 256-wide nets, T=20, 32-128 particles); --small uses 64-wide nets, T=5 and
8 particles for a quick relative comparison. Each (variant, device, threads) runs in its own process.

    python benchmarks/bench_online.py                        # all variants, table to stdout
    python benchmarks/bench_online.py --variants sdac,dpmd --small --max-seconds 5
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALL = "sac,sdac,dpmd,dpmd_tilt,dpmd_select,dpmd_fixnorm,dpmd_model,dpmd_plan,dpmd_o2o"
SMALL = dict(hidden=64, layers=2, T=5, num_particles=8, batch_size=128, model_hidden=64)


class _Stop(Exception):
    pass


class _Clock:
    """A RunLog stand-in that timestamps every update and stops the run after n updates or a time cap."""

    def __init__(self, n, max_s, sync):
        self.n, self.max_s, self.sync, self.t = n, max_s, sync, []

    def log(self, step, metrics):
        self.sync()
        self.t.append(time.perf_counter())
        if len(self.t) > self.n or (len(self.t) >= 3 and self.t[-1] - self.t[0] > self.max_s):
            raise _Stop()

    def log_eval(self, *a):
        pass

    def rate(self):
        return (len(self.t) - 1) / (self.t[-1] - self.t[0]) if len(self.t) > 1 else float("nan")


def _timed(fn, n, max_s, sync):
    fn()  # warm-up
    sync()
    times, t0 = [], time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - t0 > max_s and len(times) >= 2:
            break
    return times


def one(variant, device, threads, env_name, iters, max_s, small):
    import numpy as np
    import torch

    from diffrl.envs import make_env
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    e = make_env(env_name)
    obs_dim, act_dim = e.observation_space.shape[0], e.action_space.shape[0]
    e.close()
    g = torch.Generator(device=device).manual_seed(0)
    clock = _Clock(iters, max_s, sync)
    import dataclasses

    from diffrl.online import make_online_agent, variant_config
    from diffrl.train import train_online
    names = {f.name for f in dataclasses.fields(variant_config(variant))}
    cfg = variant_config(variant, **({k: v for k, v in SMALL.items() if k in names} if small else {}))
    cfg.warmup, cfg.buffer_size = 2 * cfg.batch_size, 100_000
    agent = make_online_agent(cfg, env_name, 0, device)
    num_envs, batch, particles = cfg.num_envs, cfg.batch_size, getattr(cfg, "num_particles", 1)
    try:
        train_online(agent, env_name, cfg, 10**9, 0, device, eval_every=10**12, eval_episodes=1, log=clock)
    except _Stop:
        pass
    act = (lambda o: agent.act(o, deterministic=True, generator=g)) if variant == "sac" else (  # noqa: E731
        lambda o: agent.act(o, g, deterministic=True))
    loop_rate = clock.rate()
    b = {"obs": torch.randn(batch, obs_dim, device=device), "action": torch.rand(batch, act_dim, device=device) * 2 - 1,
         "reward": torch.randn(batch, device=device), "next_obs": torch.randn(batch, obs_dim, device=device),
         "terminal": torch.zeros(batch, device=device)}
    upd = _timed(lambda: agent.update(b, g), iters, max_s, sync)
    o = np.random.default_rng(0).standard_normal((1, obs_dim)).astype(np.float32)
    lat = _timed(lambda: act(o), 3 * iters, max_s, sync)
    return {"variant": variant, "device": device, "threads": threads, "num_envs": num_envs, "particles": particles,
            "loop_env_steps_per_s": loop_rate * num_envs, "loop_updates_per_s": loop_rate,
            "updates_per_s": len(upd) / sum(upd), "act_ms": 1000 * float(np.median(lat)),
            "loop_updates_timed": len(clock.t) - 1, "updates_timed": len(upd)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=ALL)
    p.add_argument("--env", default="halfcheetah")
    p.add_argument("--iters", type=int, default=30, help="updates timed per measurement (at most)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="time cap per measurement")
    p.add_argument("--small", action="store_true", help="64-wide nets, T=5, 8 particles, batch 128")
    p.add_argument("--threads", default="1,2", help="CPU thread counts")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--one", nargs=3, metavar=("VARIANT", "DEVICE", "THREADS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], int(a.one[2]), a.env, a.iters, a.max_seconds, a.small)))
        return
    import torch
    runs = [("cpu", int(t)) for t in a.threads.split(",")]
    if torch.cuda.is_available() and not a.no_cuda:
        runs.append(("cuda", 1))
    rows = []
    for v in a.variants.split(","):
        for dev, th in runs:
            cmd = [sys.executable, __file__, "--one", v, dev, str(th), "--env", a.env, "--iters", str(a.iters),
                   "--max-seconds", str(a.max_seconds)] + (["--small"] if a.small else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{v} {dev} x{th}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    size = "small nets (--small)" if a.small else "published sizes"
    print(f"\n{a.env}, {size}\n")
    print("| variant | device | threads | envs | particles | loop env steps/s | loop updates/s | updates/s "
          "| act ms (1 state) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['device']} | {r['threads']} | {r['num_envs']} | {r['particles']} | "
              f"{r['loop_env_steps_per_s']:.1f} | {r['loop_updates_per_s']:.2f} | {r['updates_per_s']:.2f} | "
              f"{r['act_ms']:.2f} |")


if __name__ == "__main__":
    main()
