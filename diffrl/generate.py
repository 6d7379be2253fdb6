"""Local dataset generation, D4RL's recipes rebuilt offline (the data is NOT D4RL's).

One SAC run per environment (its data agent, `train_data_agent`) serves every generated dataset of
that environment: it keeps its policy at the first evaluation that reaches the medium score, with
the training episodes up to then, and goes on to the end of its budget for the expert policy.
`make_dataset` then writes one task's dataset as a real Minari dataset: random, medium,
medium-replay, expert or medium-expert (diffrl.tasks.QUALITIES).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffrl.algos.sac import SAC, SACConfig, SACOnlineConfig
from diffrl.data import write_minari
from diffrl.envs import make_env, normalized_score
from diffrl.tasks import Task
from diffrl.utils import cpu_name, load_checkpoint, save_checkpoint, write_json

# the data agent's policies (medium.pt also holds its training episodes up to the medium point)
AGENT_FILES = {"medium": "medium.pt", "expert": "expert.pt"}


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


EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


class DataRecorder:
    """The data agent's observer in the online loop (diffrl.train.train_online): it records
    the training episodes and, at the first evaluation whose score reaches `medium_score`, keeps
    the medium policy (a copy of the agent's weights) with the episodes finished so far, the
    medium-replay data; recording stops there. `stop_at_medium` ends the run at that point."""

    def __init__(self, medium_score: float | None, stop_at_medium: bool):
        self.medium_score, self.stop_at_medium = medium_score, stop_at_medium
        self.episodes, self.current, self.medium = [], {}, None  # current: each env's episode so far

    def settings(self) -> dict:
        return {"medium_score": self.medium_score, "stop_at_medium": self.stop_at_medium}

    def reset(self, env_index: int, obs: np.ndarray) -> None:
        if self.medium is None:
            self.current[env_index] = {k: [] for k in EPISODE_KEYS}
            self.current[env_index]["observations"].append(obs)

    def transition(self, env_index, action, reward, terminated, truncated, next_obs) -> None:
        if self.medium is not None:
            return
        for k, v in zip(EPISODE_KEYS, (next_obs, np.array(action), reward, terminated, truncated)):
            self.current[env_index][k].append(v)
        if terminated or truncated:
            self.episodes.append({k: np.asarray(v) for k, v in self.current[env_index].items()})

    def evaluated(self, env_steps: int, score: float, agent) -> bool:
        if self.medium is None and self.medium_score is not None and score >= self.medium_score:
            self.medium = {"state": {k: v.detach().clone() for k, v in agent.state_dict().items()},
                           "episodes": self.episodes, "env_steps": env_steps, "score": score}
            return self.stop_at_medium
        return False

    def state(self) -> dict:
        return {"episodes": self.episodes, "current": self.current, "medium": self.medium}

    def restore(self, state: dict) -> None:
        self.episodes, self.current, self.medium = state["episodes"], state["current"], state["medium"]


def train_data_agent(env_name: str, out_dir: Path, *, sac_cfg: SACConfig, sac_steps: int, sac_warmup: int,
                     sac_eval_every: int, medium_target: float, seed: int, device="cpu", log=None,
                     resume_path=None, stop_at_medium: bool = False) -> dict:
    """Train the environment's SAC data agent in the online loop (one env, `sac_cfg`'s
    hyperparameters, two evaluation episodes every `sac_eval_every` env steps) and write `out_dir`:
    its medium and expert policies (AGENT_FILES; the medium one with the training episodes up to
    the medium point, DataRecorder) and info.json. When the medium score is never reached, the
    medium policy is the last one (info says so). `stop_at_medium`: stop there (no expert policy),
    for a medium dataset alone."""
    from diffrl.train import built_seeded, train_online
    env = make_env(env_name)
    obs_dim, act_dim, space = env.observation_space.shape[0], env.action_space.shape[0], env.action_space
    env.close()
    meta = {"obs_dim": obs_dim, "act_dim": act_dim, "config": sac_cfg}
    agent = built_seeded(seed, lambda: SAC(obs_dim, act_dim, sac_cfg, device, space.low, space.high))
    cfg = SACOnlineConfig(**vars(sac_cfg), num_envs=1, warmup=sac_warmup)
    recorder = DataRecorder(medium_target, stop_at_medium)
    agent, run = train_online(agent, env_name, cfg, sac_steps, seed, device, eval_every=sac_eval_every,
                              eval_episodes=2, log=log, resume_path=resume_path, checkpoint_every=sac_eval_every,
                              observer=recorder)
    evaluations = [{"env_steps": c["env_steps"], "return": c["return"], "score": c["score"]} for c in run["curve"]]
    info = {"env_steps": run["env_steps"], "grad_steps": run["grad_steps"], "evaluations": evaluations,
            "score": evaluations[-1]["score"] if evaluations else None, "target_reached": recorder.medium is not None}
    medium = recorder.medium
    final = {k: v.detach().clone() for k, v in agent.state_dict().items()}
    if medium is None:  # the target was not reached: the last policy and every training episode
        medium = {"state": final, "episodes": None, "env_steps": info["env_steps"], "score": info["score"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / AGENT_FILES["medium"], {**meta, "state": medium["state"], "episodes": medium["episodes"]})
    if not stop_at_medium:
        save_checkpoint(out_dir / AGENT_FILES["expert"], {**meta, "state": final})
    summary = {"env": env_name, "seed": seed, "machine": f"{cpu_name()}, {device}", "medium_target": medium_target,
               "target_reached": info["target_reached"], "env_steps": info["env_steps"],
               "grad_steps": info["grad_steps"], "evaluations": info["evaluations"],
               "medium": {"env_steps": medium["env_steps"], "score": medium["score"]},
               "expert": None if stop_at_medium else {"env_steps": info["env_steps"], "score": info["score"]}}
    write_json(out_dir / "info.json", summary)
    return summary


def _policy_rollouts(agent_dir: Path, which: str, env_name: str, episodes: int, seed: int, device) -> list[dict]:
    """Stochastic rollouts of the data agent's medium or expert policy (D4RL's rollouts), episode
    seeds seed + 50000 on."""
    ck = load_checkpoint(Path(agent_dir) / AGENT_FILES[which], device)
    agent = SAC(ck["obs_dim"], ck["act_dim"], ck["config"], device)
    agent.load_state_dict(ck["state"])
    gen = torch.Generator(device=device).manual_seed(seed)
    return rollout(lambda o: agent.act(o, deterministic=False, generator=gen), env_name, episodes, seed + 50_000)


def make_dataset(task: Task, out_dir: Path, *, agent_dir: Path | None, episodes: int, seed: int,
                 device="cpu") -> dict:
    """Write `out_dir` as the Minari dataset of a generated task and return what it holds.

    random: uniform random actions. medium / expert: `episodes` stochastic rollouts of the data
    agent's medium / expert policy. medium-replay: the agent's training episodes up to its medium
    point. medium-expert: the medium and the expert rollouts together (2 x `episodes`)."""
    env_name, quality = task.env, task.quality
    agent = {"score": None, "env_steps": 0, "seed": seed}
    if quality == "random":
        rng = np.random.default_rng(seed)
        env = make_env(env_name)
        act_dim = env.action_space.shape[0]
        env.close()
        eps = rollout(lambda o: rng.uniform(-1, 1, (len(o), act_dim)).astype(np.float32), env_name, episodes, seed)
    else:
        import json
        trained = json.loads((Path(agent_dir) / "info.json").read_text())
        policy = "expert" if quality == "expert" else "medium"
        if trained[policy] is None:
            raise FileNotFoundError(f"{agent_dir} holds no {policy} policy: rerun its data_agent stage")
        agent = {**trained[policy], "seed": trained["seed"]}
        if quality == "medium-replay":
            eps = load_checkpoint(Path(agent_dir) / AGENT_FILES["medium"], device)["episodes"]
            if eps is None:
                raise FileNotFoundError(f"{agent_dir}: the data agent never reached its medium score "
                                        f"({trained['medium_target']}), so there is no medium-replay data: lower "
                                        f"dataset.medium_target_score or raise the budget's sac_steps")
        else:
            eps = [] if quality == "expert" else _policy_rollouts(agent_dir, "medium", env_name, episodes, seed, device)
            if quality in ("expert", "medium-expert"):
                if trained["expert"] is None:
                    raise FileNotFoundError(f"{agent_dir} holds no expert policy: rerun its data_agent stage")
                eps += _policy_rollouts(agent_dir, "expert", env_name, episodes, seed, device)
                agent = {**trained["expert"], "seed": trained["seed"]}
    returns = np.array([float(e["rewards"].sum()) for e in eps])
    info = {"task": task.name, "quality": quality, "env": env_name, "seed": seed, "machine": f"{cpu_name()}, {device}",
            "agent": agent, "episodes": len(eps), "transitions": int(sum(len(e["actions"]) for e in eps)),
            "return_mean": float(returns.mean()), "score_mean": float(normalized_score(env_name, returns).mean())}
    algorithm = "SAC" if quality != "random" else "random"
    score = "none" if agent["score"] is None else f"{agent['score']:.2f}"
    desc = (f"Locally generated {quality} data for {env_name} by the diffrl pipeline (behaviour agent {algorithm}, "
            f"{agent['env_steps']} env steps, normalised score {score}; data mean score {info['score_mean']:.2f}). "
            f"Not a D4RL dataset.")
    write_minari(out_dir, f"local/{env_name}/{quality}-v0", eps, env_name, algorithm, desc, behavior_agent=agent)
    return info
