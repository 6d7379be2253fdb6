"""Glue between stages and offline algorithms: build an agent for a run, train it on a dataset,
save the checkpoint the next stage loads, and load any row's policy back for evaluation."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from diffrl.algos import ROWS
from diffrl.data import ReplayBuffer, load_offline
from diffrl.train import train_offline
from diffrl.utils import load_checkpoint, save_checkpoint, write_json

MODEL_FILE = "model.pt"


def save_run(out_dir: Path, agent, cfg, obs_dim: int, act_dim: int, extra: dict, info: dict) -> None:
    """model.pt (config, dims, weights) + train.json (curve, steps, wall time)."""
    save_checkpoint(out_dir / MODEL_FILE, {"algo": agent.name, "config": dataclasses.asdict(cfg), "obs_dim": obs_dim,
                                           "act_dim": act_dim, "extra": extra, "state": agent.state_dict()})
    write_json(out_dir / "train.json", info)


def load_agent(run_dir: str | Path, device="cpu"):
    """Rebuild the agent saved in run_dir/model.pt (any row of the summary table)."""
    ck = load_checkpoint(Path(run_dir) / MODEL_FILE, device)
    cls = ROWS[ck["algo"]]
    agent = cls(ck["obs_dim"], ck["act_dim"], cls.config_cls(**ck["config"]), device, **ck["extra"])
    agent.load_state_dict(ck["state"])
    agent.eval()
    return agent


def describe_dataset(dataset_dir: str) -> str:
    """One line saying what the data is (locally generated data is not D4RL, and says so)."""
    info_path = Path(dataset_dir) / "info.json"
    if not info_path.exists():
        return str(dataset_dir)
    info = json.loads(info_path.read_text())
    if info.get("source") == "minari":
        return f"Minari {info.get('minari_id')}"
    return (f"locally generated {info['quality']} (SAC behaviour agent, {info['episodes']} episodes, mean score "
            f"{info['score_mean']:.1f}; not D4RL)")


def train_run(agent_cls, cfg, *, env_name: str, dataset_dir: str, out_dir: Path, seed: int, steps: int,
              eval_every: int, curve_episodes: int, device, resume_path: Path | None, budget: str,
              extra_fn=None) -> dict:
    """Load the dataset, build the agent, train it with the shared loop and save the run."""
    data = load_offline(dataset_dir, env_name)
    obs_dim, act_dim = data.obs.shape[1], data.action.shape[1]
    extra = extra_fn(data) if extra_fn else {}
    agent = agent_cls(obs_dim, act_dim, cfg, device, **extra)
    buf = ReplayBuffer.from_arrays(data.arrays(), device)
    t0 = time.time()
    info = train_offline(agent, buf, steps=steps, batch_size=cfg.batch_size, seed=seed, run_dir=out_dir,
                         env_name=env_name, eval_every=eval_every, curve_episodes=curve_episodes,
                         resume_path=resume_path, checkpoint_every=max(1, eval_every), desc=f"{agent.name} seed {seed}")
    info.update(algo=agent.name, env=env_name, seed=seed, env_steps=0, started=t0,
                run_info={"budget": budget, "dataset": describe_dataset(dataset_dir)})
    save_run(out_dir, agent, cfg, obs_dim, act_dim, extra, info)
    return info
