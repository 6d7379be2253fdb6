"""Local dataset generation: train a SAC behaviour agent to the requested quality, roll it out,
and write a real Minari dataset (D4RL's recipes, rebuilt offline; the data is NOT D4RL's)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffrl.algos.sac import SACConfig, train_sac
from diffrl.data import write_minari
from diffrl.envs import make_env, normalized_score
from diffrl.utils import cpu_name


def rollout(act, env_name: str, episodes: int, seed: int) -> list[dict]:
    """Episodes of a policy as Minari episode dicts (observations has one more row than actions)."""
    env = make_env(env_name)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        ep = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": [],
              "seed": seed + i}
        done = False
        while not done:
            a = np.asarray(act(obs[None].astype(np.float32)))[0]
            obs, r, term, trunc, _ = env.step(a)
            for k, v in zip(("observations", "actions", "rewards", "terminations", "truncations"),
                            (obs, a, r, term, trunc)):
                ep[k].append(v)
            done = term or trunc
        out.append({k: (np.asarray(v) if k != "seed" else v) for k, v in ep.items()})
    env.close()
    return out


def generate_dataset(env_name: str, quality: str, out_dir: Path, *, sac_cfg: SACConfig, sac_steps: int,
                     sac_warmup: int, sac_eval_every: int, episodes: int, medium_target: float, seed: int,
                     device="cpu", log=None, resume_path=None) -> dict:
    """Build `out_dir` as a Minari dataset of `quality` and return what was achieved.

    random: uniform random actions. medium: SAC trained until its evaluation score reaches
    `medium_target` (or the budget ends), then rolled out stochastically as D4RL did.
    expert: SAC trained for the whole budget. medium-replay: the training episodes of the
    medium run (its replay buffer). With resume_path, the SAC run checkpoints at every quality
    check and continues from a checkpoint it finds there.
    """
    # the CPU model (and device) that computed it: the same seed gives the same data only on the same
    # CPU model, since kernels round differently across models and the SAC run diverges (docs/data.md)
    info = {"quality": quality, "env": env_name, "seed": seed, "machine": f"{cpu_name()}, {device}"}
    if quality == "random":
        rng = np.random.default_rng(seed)
        env = make_env(env_name)
        act_dim = env.action_space.shape[0]
        env.close()
        eps = rollout(lambda o: rng.uniform(-1, 1, (len(o), act_dim)).astype(np.float32), env_name, episodes, seed)
        info.update(sac_env_steps=0, agent_score=None, target_reached=None)
    else:
        stop = medium_target if quality in ("medium", "medium-replay") else None
        agent, train_info, train_eps = train_sac(
            env_name, sac_cfg, sac_steps, sac_warmup, sac_eval_every, seed, device, eval_episodes=2,
            stop_score=stop, record_episodes=quality == "medium-replay", log=log, resume_path=resume_path,
            checkpoint_every=sac_eval_every)
        info.update(sac_env_steps=train_info["env_steps"], agent_score=train_info["score"],
                    target_reached=train_info["target_reached"] if stop is not None else None,
                    sac_evaluations=train_info["evaluations"])
        if quality == "medium-replay":
            eps = train_eps
        else:
            gen = torch.Generator(device=device).manual_seed(seed)
            eps = rollout(lambda o: agent.act(o, deterministic=False, generator=gen), env_name, episodes,
                          seed + 50_000)
    returns = np.array([float(e["rewards"].sum()) for e in eps])
    info.update(episodes=len(eps), transitions=int(sum(len(e["actions"]) for e in eps)),
                return_mean=float(returns.mean()), score_mean=float(normalized_score(env_name, returns).mean()))
    algorithm = "SAC" if quality != "random" else "random"
    # the behaviour agent: its normalised evaluation score when training stopped and its training env steps
    agent = {"score": info["agent_score"], "env_steps": info["sac_env_steps"], "seed": seed}
    score = "none" if agent["score"] is None else f"{agent['score']:.2f}"
    desc = (f"Locally generated {quality} data for {env_name} by the diffrl pipeline (behaviour agent {algorithm}, "
            f"{agent['env_steps']} env steps, normalised score {score}; data mean score {info['score_mean']:.2f}). "
            f"Not a D4RL dataset.")
    write_minari(out_dir, f"local/{env_name}/{quality}-v0", eps, env_name, algorithm, desc, behavior_agent=agent)
    return info
