"""The two training loops and what they share. `train_offline`: every offline algorithm (sample a
minibatch of the dataset, update, log, evaluate periodically for the learning curve, write the
final model). `train_online`: every online row and each dataset's SAC data agent (step the
environments, store the transitions, update). Both checkpoint for a bit-identical resume with one
format (save_resume / load_resume: fingerprint, code version, weights, optimisers, every random
state) and stop on non-finite weights."""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffrl.buffer import ReplayBuffer
from diffrl.fields import ConfigError
from diffrl.nets import Adam
from diffrl.envs import (curve_seed, env_state, evaluate, make_env, normalized_score, restore_env,
                         train_env_seed)
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


# --------------------------------------------------------------------------- the online loop
def built_seeded(seed: int, build):
    """build(), its random initialisation drawn from `seed`; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and after // every > before // every


def train_online(agent, env_name: str, cfg, steps: int, seed: int = 0, device="cpu",
                 eval_every: int = 50_000, eval_episodes: int = 20, log=None,
                 resume_path: str | Path | None = None, checkpoint_every: int = 0, final_eval: bool = True,
                 max_episode_steps: int = 0, reference: dict | None = None, observer=None):
    """The online loop: train `agent` (an online row's, diffrl.online.make_online_agent: SDAC/DPMD's
    DiffusionOnline or SAC; or a dataset's SAC data agent) in the environment for `steps` env steps,
    with the loop settings of its row's `cfg` (num_envs, warmup, batch_size, buffer_size).

    cfg.num_envs envs are stepped in a loop; the first cfg.warmup env steps use uniform-random
    actions, then the EMA policy acts (best of particles, noise 0.1 alpha; SAC: a Gaussian sample).
    Transitions store terminal = termination only, so truncated episodes (time limits) are
    bootstrapped. Each iteration of num_envs env steps is followed by one update once warm-up is
    over and the buffer holds a batch. Every `eval_every` env steps (and at the end) the policy is
    evaluated deterministically (DiffusionOnline.eval_actions; SAC: tanh of the mean) on
    `eval_episodes` separate episodes (seeds diffrl.envs.curve_seed(seed, env_steps) + i), with its own
    sampling generator, so evaluation never perturbs training.

    `log` (a diffrl.runlog.RunLog or alike) gets log(grad_step, metrics) after every update (size
    its total as the number of updates) and log_eval(env_steps, score, return). With `resume_path`,
    a checkpoint (model, optimisers, replay buffer, env and RNG states, counters) is written every
    `checkpoint_every` env steps, and a run finding one there continues from it bit-identically on CPU. final_eval=False leaves the evaluation at the last step to the caller
    (the pipeline's evaluate stage); max_episode_steps > 0 cuts evaluation episodes (smoke).
    `reference`: the reference scores that scores are normalised with (None: the built-in table).
    `observer` (the data agent's recorder, diffrl.generate.DataRecorder) sees every episode start
    (reset(env_index, obs)), every transition (transition(env_index, action, reward, terminated,
    truncated, next_obs)) and every evaluation (evaluated(env_steps, score, agent) -> True stops
    the run); its settings() join the resume fingerprint and its state() is checkpointed with the run.

    Returns (agent, info): info = {curve: [{step, env_steps, return, score}] (evaluation episodes;
    step, the x axis, is the env steps as in diffrl.train.run_record),
    train_episodes: [{step, return}] (TRAINING-episode returns, with exploration noise),
    env_steps, grad_steps, wall_s}.
    """
    device = torch.device(device)
    agent = agent.to(device)
    envs = [make_env(env_name) for _ in range(cfg.num_envs)]
    space = envs[0].action_space
    obs_dim, act_dim = envs[0].observation_space.shape[0], space.shape[0]
    lo, hi = space.low.astype(np.float32), space.high.astype(np.float32)
    buf = ReplayBuffer(obs_dim, act_dim, min(cfg.buffer_size, steps + cfg.num_envs), device)
    gen = torch.Generator(device=device).manual_seed(seed)  # policy sampling and update noise
    buf_gen = torch.Generator().manual_seed(seed + 1)  # minibatch indices
    rng = np.random.default_rng(seed)  # warm-up actions
    starts = [e.reset(seed=train_env_seed(seed) + i)[0] for i, e in enumerate(envs)]
    if observer is not None:
        for i, start in enumerate(starts):
            observer.reset(i, start)
    obs = np.stack(starts).astype(np.float32)
    ep_ret = np.zeros(cfg.num_envs)
    env_steps, grad_steps, wall_before = 0, 0, 0.0
    curve, train_eps = [], []
    generators = {"sampling": gen, "minibatch": buf_gen, "warmup": rng}
    fp = (fingerprint(agent, env_name, cfg=cfg, steps=steps, seed=seed, eval_every=eval_every,
                      eval_episodes=eval_episodes,
                      observer=observer.settings() if observer is not None else None)
          if resume_path is not None else "")
    progress = load_resume(resume_path, agent, device=device, fingerprint=fp, generators=generators, buffer=buf)
    if progress is not None:
        for e in envs:
            e.close()
        envs = [restore_env(s) for s in progress["envs"]]
        obs, ep_ret = progress["obs"], progress["ep_ret"]
        env_steps, grad_steps, wall_before = progress["env_steps"], progress["grad_steps"], progress["wall_s"]
        curve, train_eps = progress["curve"], progress["train_episodes"]
        if observer is not None:
            observer.restore(progress["observer"])
        print(f"resumed from {resume_path} at env step {env_steps}", flush=True)
    t0 = time.perf_counter()
    agent.train()
    while env_steps < steps:
        before = env_steps
        if env_steps < cfg.warmup:
            a = rng.uniform(-1, 1, (cfg.num_envs, act_dim)).astype(np.float32)
        else:
            with torch.no_grad():
                o = torch.as_tensor(obs, device=device)
                a = agent.sample_actions(o, gen, deterministic=False).cpu().numpy()
        a_env = lo + (a + 1) * 0.5 * (hi - lo)
        next_obs, rew, term = np.empty_like(obs), np.zeros(cfg.num_envs, np.float32), np.zeros(cfg.num_envs, np.float32)
        reset_obs = obs.copy()
        for i, e in enumerate(envs):
            o2, r, terminated, truncated, _ = e.step(a_env[i])
            next_obs[i], rew[i], term[i] = o2, r, float(terminated)
            ep_ret[i] += r
            reset_obs[i] = o2
            if observer is not None:
                observer.transition(i, a_env[i], r, terminated, truncated, o2)
            if terminated or truncated:
                train_eps.append({"step": env_steps + i + 1, "return": float(ep_ret[i])})
                ep_ret[i] = 0.0
                start = e.reset()[0]
                reset_obs[i] = start
                if observer is not None:
                    observer.reset(i, start)
        buf.add(obs=obs, action=a, reward=rew, next_obs=next_obs, terminal=term)
        obs = reset_obs
        env_steps += cfg.num_envs
        if env_steps >= cfg.warmup and buf.size >= cfg.batch_size:
            metrics = agent.update(buf.sample(cfg.batch_size, generator=buf_gen), generator=gen)
            grad_steps += 1
            if log is not None:
                log.log(grad_steps, metrics)
        last = env_steps >= steps
        if (_crossed(before, env_steps, eval_every) and not (last and not final_eval)) or (last and final_eval):
            ev_seed = curve_seed(seed, env_steps)
            ev_gen = torch.Generator(device=device).manual_seed(ev_seed)
            agent.eval()
            returns = evaluate(lambda x: agent.act(x, generator=ev_gen, deterministic=True), env_name, eval_episodes,
                               ev_seed, max_episode_steps)
            agent.train()
            ret, score = float(returns.mean()), float(normalized_score(env_name, returns, reference).mean())
            curve.append({"step": env_steps, "env_steps": env_steps, "return": ret, "score": score})
            if log is not None:
                log.log_eval(env_steps, score, ret)
            if observer is not None and observer.evaluated(env_steps, score, agent):
                break
        if resume_path is not None and _crossed(before, env_steps, checkpoint_every) and env_steps < steps:
            # a NaN or Inf since the last checkpoint stops the run here: the last good checkpoint stays
            if log is not None and hasattr(log, "check"):
                log.check(grad_steps)
            bad = first_non_finite(agent)
            if bad is not None:
                raise NumericalError(f"non-finite weights ({bad}) at env step {env_steps}: lower the learning "
                                     f"rates; the last good checkpoint is kept ({resume_path})")
            save_resume(resume_path, agent, fingerprint=fp, generators=generators, buffer=buf, progress={
                "envs": [env_state(e) for e in envs], "obs": obs, "ep_ret": ep_ret, "env_steps": env_steps,
                "grad_steps": grad_steps, "curve": curve, "train_episodes": train_eps,
                "wall_s": wall_before + time.perf_counter() - t0,
                "observer": observer.state() if observer is not None else None})
    for e in envs:
        e.close()
    if log is not None and hasattr(log, "check"):
        log.check(grad_steps)  # what was logged since the last flush
    bad = first_non_finite(agent)
    if bad is not None:  # never hand non-finite weights to the stage that saves the model
        raise NumericalError(f"non-finite weights ({bad}) after env step {env_steps}: lower the learning rates")
    return agent, {"curve": curve, "train_episodes": train_eps, "env_steps": env_steps, "grad_steps": grad_steps,
                   "wall_s": wall_before + time.perf_counter() - t0}
