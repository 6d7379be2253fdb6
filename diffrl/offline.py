"""Glue between stages and offline algorithms: build the agent of a params section, train it on
a dataset with the shared loop, save the checkpoint the next stage loads, and load any run back.

A run folder holds model.pt (section, config, constructor arguments, weights; for DTQL and EDA
also the critic and behaviour they started from) and train.json (learning curve, steps, wall
time, what data and budget it used, and the dataset's reference scores that its scores are
normalised with)."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from diffrl.algos import AGENTS, DQL_VARIANTS, PRETRAINED, ROWS, SECTIONS, extra_args
from diffrl.buffer import ReplayBuffer
from diffrl.data import load_offline
from diffrl.envs import reference_scores
from diffrl.train import run_record, train_offline
from diffrl.utils import load_checkpoint, save_checkpoint, write_json

MODEL_FILE = "model.pt"


def _meta(section: str, cfg, extra: dict) -> dict:
    return {"section": section, "config": dataclasses.asdict(cfg), "extra": extra}


def build_agent(meta: dict, obs_dim: int, act_dim: int, device, parts: dict | None = None):
    """Construct the (untrained) agent described by `meta`; composite rows get their parts. Its
    networks are compiled as the job's `compile` says (diffrl.utils.run_device)."""
    from diffrl.utils import compiled
    section = meta["section"]
    cfg = SECTIONS[section](**meta["config"])
    cls = AGENTS[section]
    if section in PRETRAINED:
        return compiled(cls(obs_dim, act_dim, cfg, parts["behavior"], parts["critic"], device, **meta["extra"]))
    return compiled(cls(obs_dim, act_dim, cfg, device, **meta["extra"]))


def load_agent(run_dir: str | Path, device="cpu"):
    """Rebuild the agent saved in run_dir/model.pt with its weights (any section)."""
    ck = load_checkpoint(Path(run_dir) / MODEL_FILE, device)
    parts = None
    if ck["parts"]:
        parts = {k: build_agent(m, ck["obs_dim"], ck["act_dim"], device) for k, m in ck["parts"].items()}
    agent = build_agent(ck["meta"], ck["obs_dim"], ck["act_dim"], device, parts)
    agent.load_state_dict(ck["state"])
    agent.eval()
    return agent, ck


def describe_dataset(dataset_dir: str) -> str:
    """One line saying what the data is (locally generated data is not D4RL, and says so)."""
    info_path = Path(dataset_dir) / "info.json"
    if not info_path.exists():
        return str(dataset_dir)
    info = json.loads(info_path.read_text())
    if info.get("source") == "minari":
        return f"Minari {info.get('minari_id')}"
    machine = f"; generated on {info['machine']}" if "machine" in info else ""
    agent = "uniform random actions" if info["quality"] == "random" else "SAC behaviour agent"
    return (f"locally generated {info['quality']} ({agent}, {info['episodes']} episodes, mean score "
            f"{info['score_mean']:.1f}{machine}; not D4RL)")


def train_run(section: str, cfg, *, env_name: str, dataset_dir: str, out_dir: Path, seed: int, steps: int,
              eval_every: int | None, curve_episodes: int | None, device, resume_path: Path | None, budget: str,
              pretrained: dict | None = None, support_states: int = 0) -> dict:
    """Train the agent of `section` on the dataset with the shared loop and save the run.

    `pretrained` maps "critic"/"behavior" to run folders whose checkpoints a composite row
    (DTQL, EDA) starts from; `support_states` is EDA's (the budget's align_support_states). Rows
    are evaluated along the way (learning curve) and checkpoint for resuming at each evaluation;
    pretraining-only sections (DTQL's and EDA's critic and behaviour) are not evaluated, take no
    eval_every or curve_episodes (so changing those does not rerun them) and checkpoint ten times
    per run (both also every DIFFRL_CHECKPOINT_SECONDS, see diffrl.train.checkpoint_interval).
    """
    data = load_offline(dataset_dir, env_name)
    reference = reference_scores(env_name, data.metadata)  # what every score of this run is normalised with
    obs_dim, act_dim = data.obs.shape[1], data.action.shape[1]
    # IQL's locomotion reward scaling is a property of the dataset
    locomotion = getattr(cfg, "reward_scaling", "") == "locomotion"
    extra = extra_args(section, reward_scale=data.locomotion_reward_scale() if locomotion else 1.0,
                       total_steps=steps, support_states=support_states)
    parts, parts_meta = None, {}
    if section in PRETRAINED:
        parts = {}
        for kind, run in (pretrained or {}).items():
            parts[kind], ck = load_agent(run, device)
            parts_meta[kind] = ck["meta"]
    meta = _meta(section, cfg, extra)
    agent = build_agent(meta, obs_dim, act_dim, device, parts)
    buf = ReplayBuffer.from_arrays(data.arrays(), device)
    t0 = time.time()
    info = train_offline(agent, buf, steps=steps, batch_size=cfg.batch_size, seed=seed, run_dir=out_dir,
                         env_name=env_name if section in ROWS else None, eval_every=eval_every,
                         curve_episodes=curve_episodes, resume_path=resume_path,
                         checkpoint_every=max(1, eval_every or steps // 10), desc=f"{section} seed {seed}",
                         reference=reference)
    pre_wall = sum(json.loads((Path(r) / "train.json").read_text()).get("wall_s", 0.0)
                   for r in (pretrained or {}).values())
    # what the evaluate stage needs for Diffusion-QL's offline model selection
    selection = ({"selection": {"k": cfg.selection_k, "published": cfg.published_selection}}
                 if section in DQL_VARIANTS else {})
    info = run_record(section=section, env=env_name, seed=seed, online=False, started=t0, info=info,
                      pretraining_wall_s=pre_wall, reference_scores=reference,
                      run_info={"budget": budget, "dataset": describe_dataset(dataset_dir)}, **selection)
    save_checkpoint(out_dir / MODEL_FILE, {"meta": meta, "parts": parts_meta, "obs_dim": obs_dim,
                                           "act_dim": act_dim, "state": agent.state_dict()})
    write_json(out_dir / "train.json", info)
    return info
