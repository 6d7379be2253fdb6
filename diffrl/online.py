"""The online rows' glue to the `online_train` stage: build the effective config of an online row
(its params section, the top-level tfg_lambda of the guided variants, the budget's warm-up cap) and
its seeded agent, train it in the online loop (diffrl.train.train_online), and save a run folder
that `diffrl.offline.load_agent` loads like any other (model.pt + train.json).

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

from diffrl.algos import GUIDED
from diffrl.envs import make_env, reference_scores
from diffrl.fields import ConfigError
from diffrl.runlog import RunLog
from diffrl.train import run_record, train_online
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
    agent = make_online_agent(cfg, env_name, seed, device)
    if init is not None:  # an offline-to-online row: the offline run's policy and critic
        agent.load_pretrained(init)
    agent, info = train_online(agent, env_name, cfg, steps, seed, device, eval_every=budget.online_eval_every,
                               eval_episodes=budget.curve_episodes, log=log,
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


def sac_config(cfg):
    """The SACConfig of the `sac` row's agent: its section's SAC hyperparameters without the loop's."""
    return cfg.agent_config()


def make_online_agent(cfg, env_name: str, seed: int, device="cpu"):
    """The agent an online row trains, initialised from `seed` (diffrl.train.built_seeded): the fork's SAC
    (alg = sac) or SDAC/DPMD's DiffusionOnline, sized and bounded by the environment."""
    from diffrl.train import built_seeded
    from diffrl.utils import compiled
    env = make_env(env_name)
    obs_dim, act_dim, space = env.observation_space.shape[0], env.action_space.shape[0], env.action_space
    env.close()
    if cfg.alg == "sac":
        from diffrl.algos.sac import SAC as agent_class
        agent_cfg = sac_config(cfg)
    else:
        from diffrl.algos.dpmd import DiffusionOnline as agent_class
        agent_cfg = cfg
    return compiled(built_seeded(seed, lambda: agent_class(obs_dim, act_dim, agent_cfg, device, space.low, space.high)))
