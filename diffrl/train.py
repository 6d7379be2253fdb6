"""The offline training loop every offline algorithm shares: sample, update, log, evaluate
periodically (the learning curve), checkpoint for resume, and write the final model."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from diffrl.data import ReplayBuffer
from diffrl.envs import evaluate, normalized_score
from diffrl.runlog import NumericalError, RunLog
from diffrl.utils import load_checkpoint, save_checkpoint

CURVE_SEED = 100_000  # learning-curve episodes use seeds CURVE_SEED + 1000 * seed + i
FINAL_SEED = 1_000_000  # final evaluation episodes use seeds FINAL_SEED + 1000 * seed + i


def policy_fn(agent, seed: int):
    """The evaluation policy of an agent, with its own seeded sampling generator."""
    device = next(agent.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    return lambda obs: agent.act(obs, generator=gen)


def eval_score(agent, env_name: str, episodes: int, seed: int) -> tuple[float, float]:
    """(mean return, mean normalised score) of `episodes` episodes from seed `seed`."""
    was_training = agent.training
    agent.eval()
    returns = evaluate(policy_fn(agent, seed), env_name, episodes, seed)
    agent.train(was_training)
    return float(returns.mean()), float(normalized_score(env_name, returns).mean())


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "gen": gen.get_state(), "numpy": np.random.get_state()}


def _set_rng_state(gen: torch.Generator, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["gen"])
    np.random.set_state(state["numpy"])


def train_offline(agent, buffer: ReplayBuffer, *, steps: int, batch_size: int, seed: int, run_dir: Path,
                  env_name: str | None, eval_every: int, curve_episodes: int,
                  resume_path: Path | None = None, checkpoint_every: int = 0, desc: str = "train") -> dict:
    """Train `agent` for `steps` gradient steps on minibatches of `buffer`.

    Every `eval_every` steps before the last the agent is evaluated for `curve_episodes` episodes
    on fresh seeds; with the final evaluation (the evaluate stage) these points form the learning
    curve, and its maximum is the best-during-training score (reported as such, never as the
    final score). With
    `resume_path`, the loop checkpoints every `checkpoint_every` steps and, if a checkpoint is
    there, resumes from it (model, optimisers, RNG states, step, curve).
    Returns {curve, grad_steps, wall_s}.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(agent.parameters()).device
    sample_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    start, curve, wall_before = 0, [], 0.0
    if resume_path is not None and Path(resume_path).exists():
        ck = load_checkpoint(resume_path, device)
        agent.load_state_dict(ck["agent"])
        for name, state in ck["optims"].items():
            getattr(agent, name).load_state_dict(state)
        _set_rng_state(gen, ck["rng"])
        start, curve, wall_before = ck["step"], ck["curve"], ck["wall_s"]
        print(f"resumed from {resume_path} at step {start}", flush=True)
    log = RunLog(run_dir, steps, desc, every=max(1, min(1000, steps // 20)))
    log.bar.update(start)
    t0 = time.perf_counter()
    agent.train()
    for step in range(start + 1, steps + 1):
        metrics = agent.update(buffer.sample(batch_size, generator=gen), generator=sample_gen)
        log.log(step, metrics)
        if env_name is not None and step % eval_every == 0 and step < steps:
            ret, score = eval_score(agent, env_name, curve_episodes, CURVE_SEED + 1000 * seed + step)
            curve.append({"step": step, "return": ret, "score": score})
            log.log_eval(step, score, ret)
        if resume_path is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            optims = {n: o.state_dict() for n, o in vars(agent).items() if isinstance(o, torch.optim.Optimizer)}
            save_checkpoint(resume_path, {"agent": agent.state_dict(), "optims": optims, "rng": _rng_state(gen),
                                          "step": step, "curve": curve,
                                          "wall_s": wall_before + time.perf_counter() - t0})
    log.close()
    return {"curve": curve, "grad_steps": steps, "wall_s": wall_before + time.perf_counter() - t0}


def check_finite(name: str, value: torch.Tensor, step: int) -> None:
    """Stop with a message naming the quantity and the step (used outside the logged metrics)."""
    if not torch.isfinite(value).all():
        raise NumericalError(f"non-finite {name} at step {step}: the last good checkpoint is kept")
