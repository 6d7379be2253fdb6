"""The online loop (`train_online`, every online row: the fork's SAC and the SDAC/DPMD variants)
and its glue to the `online_train` stage: build the effective config of an online row (its params
section, the top-level tfg_lambda of the guided variants, the budget's warm-up cap), train it in the
environment, and save a run folder that `diffrl.offline.load_agent` loads like any other
(model.pt + train.json). The offline loop is diffrl.train.train_offline; both checkpoint, resume
and guard against NaNs with the helpers of diffrl.train.

Rows: the online rows of the registry (diffrl.algos.ONLINE), one OnlineConfig section of params.yaml
each, which holds what makes the row that variant: `sac` (the fork's
Gaussian SAC baseline; its section is `sac_online`, since `sac` is the dataset stage's agent) and
the SDAC/DPMD variants. An offline-to-online row (offline_init set) starts from the policy and
critic of an offline run, and normalises its scores with the reference scores that run recorded
(its dataset's); the other rows with the built-in D4RL table (diffrl.envs.reference_scores).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from diffrl.algos import GUIDED
from diffrl.buffer import ReplayBuffer
from diffrl.envs import (curve_seed, env_state, evaluate, make_env, normalized_score, reference_scores, restore_env,
                         train_env_seed)
from diffrl.fields import ConfigError
from diffrl.runlog import NumericalError, RunLog
from diffrl.train import first_non_finite, fingerprint, load_resume, run_record, save_resume
from diffrl.utils import read_json, save_checkpoint, write_json

MODEL_FILE = "model.pt"
PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


def variant_config(row: str, **overrides):
    """An online row's config as params.yaml sets it (a guided variant with the top-level
    tfg_lambda), with field overrides: the named variants for tests and benchmarks."""
    from diffrl import config
    from diffrl.algos import ONLINE, section_of
    if row not in ONLINE:
        raise ConfigError(f"unknown online row '{row}': choose one of {', '.join(ONLINE)}")
    section = section_of(row)
    p = config.load(PARAMS_FILE, sections=[section])
    valid = {f.name for f in dataclasses.fields(p[section])}
    for key in overrides:
        if key not in valid:
            raise ConfigError(f"unknown {type(p[section]).__name__} field '{key}' of row {row}")
    cfg = dataclasses.replace(p[section], **overrides)
    cfg = effective_config(row, cfg, p["tfg_lambda"], None) if "tfg_lambda" not in overrides else cfg
    cfg.check()
    return cfg


def effective_config(row: str, cfg, tfg_lambda: float, budget):
    """The config a row trains with: the guided variants take the top-level tfg_lambda; every
    row's warm-up is capped by the budget (the published 30000 needs the paper budget; budget None:
    uncapped)."""
    warmup = cfg.warmup if budget is None else min(cfg.warmup, budget.online_warmup)
    guided = {"tfg_lambda": tfg_lambda} if row in GUIDED else {}
    return dataclasses.replace(cfg, warmup=warmup, **guided)


def check_offline_init(row: str, cfg, ck: dict, offline_run) -> None:
    """The offline run (its loaded model.pt `ck`) an o2o row starts from must have the same networks
    and diffusion schedule; say which key to change before any env step is taken."""
    off = ck["meta"]["config"]
    wanted = {"hidden": off["hidden"], "layers": off["layers"], "T": off["T"], "schedule": "vp"}
    for key, value in wanted.items():
        if getattr(cfg, key) != value:
            raise ConfigError(f"{row}.{key}={getattr(cfg, key)!r} does not match the {cfg.offline_init} run it "
                              f"starts from ({offline_run}): set {row}.{key}: {value}")


def train_online_run(row: str, cfg, *, env_name: str, out_dir: Path, seed: int, budget, budget_name: str,
                     device, resume_path: Path | None, offline_run: str | None = None) -> dict:
    """Train one online row for budget.online_steps env steps and save the run to out_dir."""
    from diffrl.offline import load_agent

    env = make_env(env_name)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low.tolist(), env.action_space.high.tolist()
    env.close()
    steps = budget.online_steps
    run_info = {"budget": budget_name, "dataset": "online (environment interaction, no dataset)"}
    pre_wall = 0.0
    t0 = time.time()
    init, reference = None, reference_scores(env_name)
    if getattr(cfg, "offline_init", ""):  # the SDAC/DPMD rows' (SAC starts from scratch)
        if offline_run is None:
            raise ConfigError(f"{row}.offline_init={cfg.offline_init!r} needs its offline run: "
                              f"run it through snakemake or dvc, which pass it")
        init, ck = load_agent(offline_run, device)
        check_offline_init(row, cfg, ck, offline_run)
        offline_info = read_json(Path(offline_run) / "train.json")
        pre_wall = offline_info.get("wall_s", 0.0)
        reference = reference_scores(env_name, offline_info.get("reference_scores"))
        run_info["dataset"] = f"online, starting from {offline_run}"
    updates = max(1, (steps - max(cfg.warmup, cfg.batch_size)) // cfg.num_envs + 1)
    log = RunLog(out_dir, updates, f"{row} seed {seed}")
    agent, info = train_online(env_name, cfg, steps, seed, device, eval_every=budget.online_eval_every,
                               eval_episodes=budget.curve_episodes, log=log, init_agent=init,
                               resume_path=resume_path, checkpoint_every=budget.online_eval_every,
                               final_eval=False, max_episode_steps=budget.max_episode_steps, reference=reference)
    log.close()
    if cfg.alg == "sac":  # saved as the SAC agent it is (diffrl.offline.load_agent rebuilds it)
        meta = {"section": "sac", "config": dataclasses.asdict(sac_config(cfg)), "extra": {}}
    else:
        meta = {"section": row, "config": dataclasses.asdict(cfg),
                "extra": {"action_low": low, "action_high": high}}
    save_checkpoint(Path(out_dir) / MODEL_FILE, {"meta": meta, "parts": {}, "obs_dim": obs_dim, "act_dim": act_dim,
                                                 "state": agent.state_dict()})
    out = run_record(section=row, env=env_name, seed=seed, online=True, started=t0,
                     info={**info, "wall_s": time.time() - t0}, pretraining_wall_s=pre_wall,
                     reference_scores=reference, run_info=run_info)
    write_json(Path(out_dir) / "train.json", out)
    return out


# --------------------------------------------------------------------------- the online loop
def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and after // every > before // every


def sac_config(cfg):
    """The SACConfig of the `sac` row's agent: its section's SAC hyperparameters without the loop's."""
    return cfg.agent_config()


def make_online_agent(cfg, obs_dim: int, act_dim: int, device, action_low, action_high):
    """The agent an online row trains: the fork's SAC (alg = sac) or SDAC/DPMD's DiffusionOnline."""
    from diffrl.utils import compiled
    if cfg.alg == "sac":
        from diffrl.algos.sac import SAC
        return compiled(SAC(obs_dim, act_dim, sac_config(cfg), device))
    from diffrl.algos.dpmd import DiffusionOnline
    return compiled(DiffusionOnline(obs_dim, act_dim, cfg, device, action_low, action_high))


def train_online(env_name: str, cfg, steps: int, seed: int = 0, device="cpu",
                 eval_every: int = 50_000, eval_episodes: int = 20, log=None, init_agent=None,
                 resume_path: str | Path | None = None, checkpoint_every: int = 0, final_eval: bool = True,
                 max_episode_steps: int = 0, reference: dict | None = None):
    """Train SDAC/DPMD (or, with cfg.alg = sac, the fork's SAC) online for `steps` env steps.

    cfg.num_envs envs are stepped in a loop; the first cfg.warmup env steps use uniform-random
    actions, then the EMA policy acts (best of particles, noise 0.1 alpha; SAC: a Gaussian sample).
    Transitions store terminal = termination only, so truncated episodes (time limits) are
    bootstrapped. Each iteration of num_envs env steps is followed by one update once warm-up is
    over and the buffer holds a batch. Every `eval_every` env steps (and at the end) the policy is
    evaluated deterministically (DiffusionOnline.eval_actions; SAC: tanh of the mean) on
    `eval_episodes` separate episodes (seeds diffrl.envs.curve_seed(seed, env_steps) + i), with its own
    sampling generator, so evaluation never perturbs training.

    `log` (a diffrl.runlog.RunLog or alike) gets log(grad_step, metrics) after every update (size
    its total as the number of updates) and log_eval(env_steps, score, return). `init_agent`: a
    DiffusionOnline (used as is) or an object/dict with `actor`/`critic` weights (see
    DiffusionOnline.load_pretrained) for offline-to-online runs; keep or zero cfg.warmup as wanted.
    With `resume_path`, a checkpoint (model, optimisers, replay buffer, env and RNG states, counters)
    is written every `checkpoint_every` env steps, and a run finding one there continues from it
    bit-identically on CPU. final_eval=False leaves the evaluation at the last step to the caller
    (the pipeline's evaluate stage); max_episode_steps > 0 cuts evaluation episodes (smoke).
    `reference`: the reference scores that scores are normalised with (None: the built-in table).

    Returns (agent, info): info = {curve: [{step, env_steps, return, score}] (evaluation episodes;
    step, the x axis, is the env steps as in diffrl.train.run_record),
    train_episodes: [{step, return}] (TRAINING-episode returns, with exploration noise),
    env_steps, grad_steps, wall_s}.
    """
    if cfg.alg == "sac" and init_agent is not None:
        raise ConfigError("alg sac has no offline initialisation: init_agent must be None")
    device = torch.device(device)
    envs = [make_env(env_name) for _ in range(cfg.num_envs)]
    space = envs[0].action_space
    obs_dim, act_dim = envs[0].observation_space.shape[0], space.shape[0]
    from diffrl.algos.dpmd import DiffusionOnline
    if isinstance(init_agent, DiffusionOnline):
        agent = init_agent.to(device)
    else:
        with torch.random.fork_rng(devices=[]):  # seeded initialisation; the global RNG is left alone
            torch.manual_seed(seed)
            agent = make_online_agent(cfg, obs_dim, act_dim, device, space.low, space.high)
        if init_agent is not None:
            agent.load_pretrained(init_agent)
    lo, hi = space.low.astype(np.float32), space.high.astype(np.float32)
    buf = ReplayBuffer(obs_dim, act_dim, min(cfg.buffer_size, steps + cfg.num_envs), device)
    gen = torch.Generator(device=device).manual_seed(seed)  # policy sampling and update noise
    buf_gen = torch.Generator().manual_seed(seed + 1)  # minibatch indices
    rng = np.random.default_rng(seed)  # warm-up actions
    obs = np.stack([e.reset(seed=train_env_seed(seed) + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    ep_ret = np.zeros(cfg.num_envs)
    env_steps, grad_steps, wall_before = 0, 0, 0.0
    curve, train_eps = [], []
    generators = {"sampling": gen, "minibatch": buf_gen, "warmup": rng}
    fp = (fingerprint(agent, env_name, cfg=cfg, steps=steps, seed=seed, eval_every=eval_every,
                      eval_episodes=eval_episodes, offline_init=init_agent is not None)
          if resume_path is not None else "")
    progress = load_resume(resume_path, agent, device=device, fingerprint=fp, generators=generators, buffer=buf)
    if progress is not None:
        for e in envs:
            e.close()
        envs = [restore_env(s) for s in progress["envs"]]
        obs, ep_ret = progress["obs"], progress["ep_ret"]
        env_steps, grad_steps, wall_before = progress["env_steps"], progress["grad_steps"], progress["wall_s"]
        curve, train_eps = progress["curve"], progress["train_episodes"]
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
            if terminated or truncated:
                train_eps.append({"step": env_steps + i + 1, "return": float(ep_ret[i])})
                ep_ret[i] = 0.0
                reset_obs[i] = e.reset()[0]
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
                "wall_s": wall_before + time.perf_counter() - t0})
    for e in envs:
        e.close()
    if log is not None and hasattr(log, "check"):
        log.check(grad_steps)  # what was logged since the last flush
    bad = first_non_finite(agent)
    if bad is not None:  # never hand non-finite weights to the stage that saves the model
        raise NumericalError(f"non-finite weights ({bad}) after env step {env_steps}: lower the learning rates")
    return agent, {"curve": curve, "train_episodes": train_eps, "env_steps": env_steps, "grad_steps": grad_steps,
                   "wall_s": wall_before + time.perf_counter() - t0}
