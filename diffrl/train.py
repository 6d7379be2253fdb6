"""The offline training loop every offline algorithm shares: sample, update, log, evaluate
periodically (the learning curve), checkpoint for resume, and write the final model."""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from pathlib import Path

import torch

from diffrl.buffer import ReplayBuffer
from diffrl.fields import ConfigError
from diffrl.nets import Adam
from diffrl.envs import curve_seed, evaluate, normalized_score
from diffrl.runlog import NumericalError, RunLog
from diffrl.utils import load_checkpoint, rng_state, save_checkpoint, set_rng_state



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


def data_fingerprint(buffer: ReplayBuffer) -> tuple:
    """What identifies a fixed dataset in a fingerprint: its size and a hash of its rewards and
    terminals (another dataset of the same size differs there; a few MB to hash)."""
    h = hashlib.sha256()
    for key in ("reward", "terminal"):
        h.update(buffer.data[key][: buffer.size].cpu().numpy().tobytes())
    return buffer.size, h.hexdigest()[:16]


def fingerprint(agent, data, **settings) -> str:
    """What a resume checkpoint must match to be resumed from, the same recipe for every loop: the
    agent (its class, config and tensor shapes), what it learns from (`data`: an environment's name,
    or data_fingerprint of a dataset) and the run's settings (steps, seed, batch size, evaluation
    schedule, ...). The code that wrote it is checked separately (code_version)."""
    shapes = [(k, tuple(v.shape)) for k, v in agent.state_dict().items() if torch.is_tensor(v)]
    return repr((type(agent).__name__, repr(getattr(agent, "cfg", None)), shapes, data, sorted(settings.items())))


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


def save_resume(resume_path: Path, agent, *, fingerprint: str, generators: dict, progress: dict,
                buffer: ReplayBuffer | None = None) -> None:
    """Write the resume checkpoint of a training loop, the one layout every loop uses:
    {fingerprint, code_version, agent, optims[, buffer], rng, progress}: the learner
    (training_state), every random state (diffrl.utils.rng_state with the loop's named
    `generators`) and `progress`, what the loop itself needs to continue (its step counters, curve,
    environment states, ...)."""
    save_checkpoint(resume_path, {"fingerprint": fingerprint, "code_version": code_version(),
                                  **training_state(agent, buffer), "rng": rng_state(generators),
                                  "progress": progress})


def load_resume(resume_path: Path | None, agent, *, device, fingerprint: str, generators: dict,
                buffer: ReplayBuffer | None = None) -> dict | None:
    """Restore a run from the checkpoint save_resume wrote at resume_path: the agent, its
    optimisers, the buffer and every random state (into `generators`), and return its `progress`.
    None, with nothing restored, when there is none or it cannot be used (the reason on stderr, one
    line naming the file): unreadable (truncated, corrupted), written with other settings than
    `fingerprint` says, by other code, or by a run on another kind of device (other generators)."""
    if resume_path is None or not Path(resume_path).exists():
        return None
    try:
        ck = load_checkpoint(resume_path, device)
        if not isinstance(ck, dict) or "progress" not in ck:
            raise RuntimeError(f"checkpoint {resume_path} holds no training state")
    except (RuntimeError, FileNotFoundError) as e:
        print(f"warning: {e}; starting from step 0", file=sys.stderr, flush=True)
        return None
    reason = None
    if ck.get("fingerprint") != fingerprint:
        reason = "was written with other settings (a changed hyperparameter, budget or dataset)"
    elif ck.get("code_version") != code_version():
        reason = "was written by another version of the code"
    elif set(ck["rng"]["generators"]) != set(generators):
        reason = "was written on another kind of device"
    if reason is not None:
        print(f"warning: resume checkpoint {resume_path} {reason}; starting from step 0", file=sys.stderr, flush=True)
        return None
    restore_training_state(agent, ck, buffer)
    set_rng_state(ck["rng"], generators)
    return ck["progress"]


def run_record(*, section: str, env: str, seed: int, online: bool, started: float, info: dict,
               pretraining_wall_s: float, reference_scores: dict, run_info: dict, **extra) -> dict:
    """A run's train.json, one schema for both loops. Every run: section, env, seed, online,
    started, curve (points {step, return, score}: step is the x axis, gradient steps offline and
    env steps online, where points also hold env_steps; offline points of agents with a BC loss
    also bc_loss), grad_steps, wall_s (this run's training), pretraining_wall_s (the runs it started
    from), reference_scores (what its scores are normalised with), run_info (budget, data). An
    online run adds env_steps and train_episode_returns (returns of TRAINING episodes, exploration
    noise on: labelled, never a score); an offline run prepare_s and, where they apply,
    final_bc_loss and selection (diffrl.offline.train_run). `info`: the loop's result."""
    out = {"section": section, "env": env, "seed": seed, "online": online, "started": started,
           "curve": info["curve"], "grad_steps": int(info["grad_steps"]), "wall_s": info["wall_s"],
           "pretraining_wall_s": pretraining_wall_s, "reference_scores": reference_scores, "run_info": run_info}
    if online:
        out.update(env_steps=int(info["env_steps"]), train_episode_returns=info["train_episodes"])
    else:
        out.update({k: info[k] for k in ("prepare_s", "final_bc_loss") if k in info})
    return {**out, **extra}


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
    # the sampling generator of a CUDA run is the device's own
    generators = {"minibatch": gen} if sample_gen is gen else {"minibatch": gen, "sampling": sample_gen}
    fp = (fingerprint(agent, data_fingerprint(buffer), steps=steps, batch_size=batch_size, seed=seed)
          if resume_path is not None else "")
    progress = load_resume(resume_path, agent, device=device, fingerprint=fp, generators=generators)
    if progress is not None:
        start, curve, wall_before = progress["step"], progress["curve"], progress["wall_s"]
        bc_sum, bc_n = progress["bc_loss_acc"]
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
            save_resume(resume_path, agent, fingerprint=fp, generators=generators,
                        progress={"step": step, "curve": curve, "bc_loss_acc": (bc_sum, bc_n),
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

