"""The offline training loop every offline algorithm shares: sample, update, log, evaluate
periodically (the learning curve), checkpoint for resume, and write the final model."""
from __future__ import annotations

import functools
import hashlib
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffrl.buffer import ReplayBuffer
from diffrl.fields import ConfigError
from diffrl.nets import Adam
from diffrl.envs import curve_seed, evaluate, normalized_score
from diffrl.runlog import NumericalError, RunLog
from diffrl.utils import load_checkpoint, save_checkpoint



def policy_fn(agent, seed: int):
    """The evaluation policy of an agent, with its own seeded sampling generator."""
    device = next(agent.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    return lambda obs: agent.act(obs, generator=gen)


def eval_score(agent, env_name: str, episodes: int, seed: int, reference: dict | None = None) -> tuple[float, float]:
    """(mean return, mean normalised score) of `episodes` episodes from seed `seed`; `reference`:
    the reference scores to normalise with (diffrl.envs.reference_scores; None: the built-in table)."""
    was_training = agent.training
    agent.eval()
    returns = evaluate(policy_fn(agent, seed), env_name, episodes, seed)
    agent.train(was_training)
    return float(returns.mean()), float(normalized_score(env_name, returns, reference).mean())


def _rng_state(gen: torch.Generator, sample_gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "gen": gen.get_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if sample_gen is not gen:  # the device generator of a CUDA run
        state["sample_gen"] = sample_gen.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, sample_gen: torch.Generator, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["gen"])
    np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])
    if sample_gen is not gen and "sample_gen" in state:
        sample_gen.set_state(state["sample_gen"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(agent, buffer: ReplayBuffer | None = None) -> dict:
    """What a resume checkpoint holds of a learner: its weights, every optimiser it owns (the
    attributes that are optimisers: diffrl.nets.Adam, or a torch one that an added algorithm built)
    and, for online runs, the replay buffer."""
    optims = {n: o.state_dict() for n, o in vars(agent).items() if isinstance(o, (Adam, torch.optim.Optimizer))}
    out = {"agent": agent.state_dict(), "optims": optims}
    if buffer is not None:
        out["buffer"] = buffer.state_dict()
    return out


def restore_training_state(agent, ck: dict, buffer: ReplayBuffer | None = None) -> None:
    """The inverse of training_state."""
    agent.load_state_dict(ck["agent"])
    for name, state in ck["optims"].items():
        getattr(agent, name).load_state_dict(state)
    if buffer is not None:
        buffer.load_state_dict(ck["buffer"])


def checkpoint_interval(every: int) -> tuple[int, float]:
    """(steps, seconds) between resume checkpoints. DIFFRL_CHECKPOINT_EVERY (gradient steps)
    overrides the caller's step interval; DIFFRL_CHECKPOINT_SECONDS (default 600) also writes one
    whenever that much time has passed, so a preempted long run loses at most that much work.
    Neither changes results: a resumed run ends bit-identical to an uninterrupted one on CPU."""
    def env(name, cast, default):
        text = os.environ.get(name, "").strip()
        if not text:
            return default
        try:
            value = cast(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a number: set a whole number of "
                              f"{'steps' if cast is int else 'seconds'}, or unset it") from None
        if value < 0:
            raise ConfigError(f"{name}={text!r} is out of range: it must be >= 0 (0 turns it off)")
        return value
    return env("DIFFRL_CHECKPOINT_EVERY", int, every), env("DIFFRL_CHECKPOINT_SECONDS", float, 600.0)


def _fingerprint(agent, buffer: ReplayBuffer, steps: int, batch_size: int, seed: int) -> str:
    """What a resume checkpoint must match: a checkpoint left by a run with other settings (a
    changed hyperparameter, budget or dataset) is never resumed from."""
    shapes = [(k, tuple(v.shape)) for k, v in agent.state_dict().items() if torch.is_tensor(v)]
    return repr((type(agent).__name__, repr(getattr(agent, "cfg", None)), steps, batch_size, seed,
                 buffer.size, shapes))


def first_non_finite(agent) -> str | None:
    """Name of the first floating-point tensor of agent.state_dict() holding a NaN or Inf, else None."""
    for name, v in agent.state_dict().items():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return name
    return None


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """A hash of the diffrl package's source files: a resume checkpoint written by other code (an
    edit anywhere in diffrl since the run was interrupted) is never resumed from."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def save_resume(resume_path: Path, payload: dict) -> None:
    """Write a resume checkpoint (every training loop's), stamped with the code version."""
    save_checkpoint(resume_path, {**payload, "code_version": code_version()})


def load_resume(resume_path: Path, device, fingerprint: str):
    """The resume checkpoint at resume_path, or None when there is none or it cannot be used (the
    reason on stderr, one line naming the file): unreadable (truncated, corrupted), written with
    other settings than `fingerprint` says, or written by other code."""
    if not Path(resume_path).exists():
        return None
    try:
        ck = load_checkpoint(resume_path, device)
        if not isinstance(ck, dict):
            raise RuntimeError(f"checkpoint {resume_path} holds no training state")
    except (RuntimeError, FileNotFoundError) as e:
        print(f"warning: {e}; starting from step 0", file=sys.stderr, flush=True)
        return None
    if ck.get("fingerprint") != fingerprint:
        print(f"warning: resume checkpoint {resume_path} was written with other settings (a changed "
              f"hyperparameter, budget or dataset); starting from step 0", file=sys.stderr, flush=True)
        return None
    if ck.get("code_version") != code_version():
        print(f"warning: resume checkpoint {resume_path} was written by another version of the code; "
              f"starting from step 0", file=sys.stderr, flush=True)
        return None
    return ck


def train_offline(agent, buffer: ReplayBuffer, *, steps: int, batch_size: int, seed: int, run_dir: Path,
                  env_name: str | None, eval_every: int, curve_episodes: int,
                  resume_path: Path | None = None, checkpoint_every: int = 0, desc: str = "train",
                  reference: dict | None = None) -> dict:
    """Train `agent` for `steps` gradient steps on minibatches of `buffer`.

    Every `eval_every` steps before the last the agent is evaluated for `curve_episodes` episodes
    on fresh seeds, its scores normalised with `reference` (the dataset's reference scores:
    diffrl.envs.reference_scores); with the final evaluation (the evaluate stage) these points
    form the learning curve, and its maximum is the best-during-training score (reported as such,
    never as the final score). With `resume_path`, the loop checkpoints every `checkpoint_every`
    steps (see checkpoint_interval) and, if a checkpoint of the same settings is there, resumes
    from it (model, optimisers, RNG states, step, curve). A checkpoint is only written after the
    losses and weights since the last one were checked finite, so a NaN or Inf never replaces the
    last good checkpoint; it stops the run with NumericalError naming the quantity and the step.
    Curve points of agents that report a `bc_loss` also hold its mean since the previous point
    (and the result its final value, `final_bc_loss`) for offline model selection.
    Agents with a `prepare(buffer, generator)` method derive what they need from the data first
    (EDA: its behaviour samples per state); its time is `prepare_s`, included in `wall_s`.
    Returns {curve, grad_steps, wall_s, prepare_s[, final_bc_loss]}.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(agent.parameters()).device
    sample_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    start, curve, wall_before = 0, [], 0.0
    # mean BC loss since the last evaluation (Diffusion-QL's offline model selection); summed on the
    # device, read once per evaluation
    bc_sum, bc_n = torch.zeros((), device=device), 0
    every_steps, every_s = checkpoint_interval(checkpoint_every) if resume_path is not None else (0, 0.0)
    fingerprint = _fingerprint(agent, buffer, steps, batch_size, seed) if resume_path is not None else ""
    if resume_path is not None and Path(resume_path).exists():
        ck = load_resume(Path(resume_path), device, fingerprint)
        if ck is not None:
            restore_training_state(agent, ck)
            _set_rng_state(gen, sample_gen, ck["rng"])
            start, curve, wall_before = ck["step"], ck["curve"], ck["wall_s"]
            bc_sum, bc_n = ck.get("bc_loss_acc", (bc_sum, 0))
            print(f"resumed from {resume_path} at step {start}", flush=True)
    prepare_s = 0.0
    if hasattr(agent, "prepare"):  # what an agent derives from the data once (EDA's support actions);
        t_prep = time.perf_counter()  # its own generator, so a resumed run derives the same
        agent.prepare(buffer, torch.Generator(device=device).manual_seed(seed))
        prepare_s = time.perf_counter() - t_prep
        print(f"{desc}: prepared in {prepare_s:.1f} s", flush=True)
    log = RunLog(run_dir, steps, desc, every=max(1, min(1000, steps // 20)))
    log.bar.update(start)
    t0 = last_save = time.perf_counter()
    agent.train()
    for step in range(start + 1, steps + 1):
        metrics = agent.update(buffer.sample(batch_size, generator=gen), generator=sample_gen)
        log.log(step, metrics)
        if "bc_loss" in metrics:
            bc_sum, bc_n = bc_sum + metrics["bc_loss"].detach(), bc_n + 1
        if env_name is not None and step % eval_every == 0 and step < steps:
            ret, score = eval_score(agent, env_name, curve_episodes, curve_seed(seed, step), reference)
            curve.append({"step": step, "return": ret, "score": score})
            if bc_n:
                curve[-1]["bc_loss"] = float(bc_sum) / bc_n
                bc_sum, bc_n = torch.zeros((), device=device), 0
            log.log_eval(step, score, ret)
        due = (every_steps and step % every_steps == 0) or (every_s and time.perf_counter() - last_save >= every_s)
        if resume_path is not None and due and step < steps:
            log.check(step)  # every loss since the last flush, not only the logged means
            bad = first_non_finite(agent)
            if bad is not None:
                raise NumericalError(f"non-finite weights ({bad}) at step {step}: lower the learning rate or "
                                     f"check the data; the last good checkpoint is kept ({resume_path})")
            save_resume(resume_path, {**training_state(agent),
                                          "rng": _rng_state(gen, sample_gen), "step": step, "curve": curve,
                                          "fingerprint": fingerprint, "bc_loss_acc": (bc_sum, bc_n),
                                          "wall_s": wall_before + time.perf_counter() - t0})
            last_save = time.perf_counter()
    log.close()
    bad = first_non_finite(agent)
    if bad is not None:  # never hand non-finite weights to the stage that saves the model
        raise NumericalError(f"non-finite weights ({bad}) after step {steps}: lower the learning rate or "
                             f"check the data" + (f"; the last good checkpoint is kept ({resume_path})"
                                                  if resume_path is not None else ""))
    out = {"curve": curve, "grad_steps": steps, "wall_s": wall_before + time.perf_counter() - t0 + prepare_s,
           "prepare_s": prepare_s}
    if bc_n:  # the BC loss of the final checkpoint (evaluated by the evaluate stage)
        out["final_bc_loss"] = float(bc_sum) / bc_n
    return out


def check_finite(name: str, value: torch.Tensor, step: int) -> None:
    """Stop with a message naming the quantity and the step (used outside the logged metrics)."""
    if not torch.isfinite(value).all():
        raise NumericalError(f"non-finite {name} at step {step}: the last good checkpoint is kept")
