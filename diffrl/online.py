"""Glue between the `online_train` stage and the online algorithms: build the effective config of
an online row (its params section, the top-level tfg_lambda of the guided variants, the budget's
warm-up cap), train it in the environment, and save a run folder that `diffrl.offline.load_agent`
loads like any other (model.pt + train.json).

Rows: the online rows of the registry (diffrl.algos.ONLINE), one OnlineConfig section of params.yaml
each, which holds what makes the row that variant: `sac` (the fork's
Gaussian SAC baseline; its section is `sac_online`, since `sac` is the dataset stage's agent) and
the SDAC/DPMD variants. An offline-to-online row (offline_init set) starts from the policy and
critic of an offline run.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from diffrl.algos import GUIDED
from diffrl.fields import ConfigError
from diffrl.runlog import RunLog
from diffrl.utils import read_json, save_checkpoint, write_json

MODEL_FILE = "model.pt"
PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


def variant_config(row: str, **overrides):
    """An online row's OnlineConfig as params.yaml sets it (a guided variant with the top-level
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
            raise ConfigError(f"unknown OnlineConfig field '{key}'")
    cfg = dataclasses.replace(p[section], **overrides)
    cfg = effective_config(row, cfg, p["tfg_lambda"], None) if "tfg_lambda" not in overrides else cfg
    cfg.check()
    return cfg


def effective_config(row: str, cfg, tfg_lambda: float, budget):
    """The config a row trains with: the guided variants take the top-level tfg_lambda; every
    row's warm-up is capped by the budget (the published 30000 needs the paper budget; budget None:
    uncapped)."""
    warmup = cfg.warmup if budget is None else min(cfg.warmup, budget.online_warmup)
    return dataclasses.replace(cfg, tfg_lambda=tfg_lambda if row in GUIDED else cfg.tfg_lambda, warmup=warmup)


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
    from diffrl.algos.dpmd import sac_config, train_online
    from diffrl.envs import make_env
    from diffrl.offline import load_agent

    env = make_env(env_name)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low.tolist(), env.action_space.high.tolist()
    env.close()
    steps = budget.online_steps
    run_info = {"budget": budget_name, "dataset": "online (environment interaction, no dataset)"}
    pre_wall = 0.0
    t0 = time.time()
    init = None
    if cfg.offline_init:
        if offline_run is None:
            raise ConfigError(f"{row}.offline_init={cfg.offline_init!r} needs its offline run: "
                              f"run it through snakemake or dvc, which pass it")
        init, ck = load_agent(offline_run, device)
        check_offline_init(row, cfg, ck, offline_run)
        pre_wall = read_json(Path(offline_run) / "train.json").get("wall_s", 0.0)
        run_info["dataset"] = f"online, starting from {offline_run}"
    updates = max(1, (steps - max(cfg.warmup, cfg.batch_size)) // cfg.num_envs + 1)
    log = RunLog(out_dir, updates, f"{row} seed {seed}")
    agent, info = train_online(env_name, cfg, steps, seed, device, eval_every=budget.online_eval_every,
                               eval_episodes=budget.curve_episodes, log=log, init_agent=init,
                               resume_path=resume_path, checkpoint_every=budget.online_eval_every,
                               final_eval=False, max_episode_steps=budget.max_episode_steps)
    log.close()
    if cfg.alg == "sac":  # saved as the SAC agent it is (diffrl.offline.load_agent rebuilds it)
        meta = {"section": "sac", "config": dataclasses.asdict(sac_config(cfg)), "extra": {}}
    else:
        meta = {"section": row, "config": dataclasses.asdict(cfg),
                "extra": {"action_low": low, "action_high": high}}
    save_checkpoint(Path(out_dir) / MODEL_FILE, {"meta": meta, "parts": {}, "obs_dim": obs_dim, "act_dim": act_dim,
                                                 "state": agent.state_dict()})
    out = {"section": row, "env": env_name, "seed": seed, "online": True, "started": t0,
           "curve": info["curve"], "env_steps": int(info["env_steps"]), "grad_steps": int(info["grad_steps"]),
           # returns of TRAINING episodes (exploration noise on): labelled, never used as a score
           "train_episode_returns": info.get("train_episodes", []),
           "wall_s": time.time() - t0, "pretraining_wall_s": pre_wall, "run_info": run_info}
    write_json(Path(out_dir) / "train.json", out)
    return out
