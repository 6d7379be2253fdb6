"""Soft actor-critic (Haarnoja et al. 2018): the data-collection agent of the dataset stage and,
with the fork's settings, the `sac` online row. One file: config, agent, training loop.

SACConfig's defaults are the dataset agent (2x256 ReLU, tanh-corrected log-prob, log std in
[-5, 2], one env, one update per env step, `train_sac`). The `sac` row is the baseline of the
fork's "SAC 11114" (pnielsen2/inference_mirror_descent, relax/algorithm/sac.py, network/sac.py,
network/common.py): 3x256 exact GELU, rewards scaled by 0.2, log alpha starting at 1 (alpha = e),
alpha lr 3e-4, log std clipped to [-20, 0.5] and the log-prob of the pre-tanh Gaussian sample
WITHOUT the tanh correction. It runs in the online loop, diffrl.online.train_online (5 envs, one update
per iteration of 5 env steps), configured by a SACOnlineConfig: SACConfig and the loop's num_envs and warmup."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from diffrl.buffer import ReplayBuffer
from diffrl.envs import env_state, evaluate, make_env, normalized_score, restore_env
from diffrl.fields import ConfigError, param
from diffrl.nets import adam, Critic, LOG_STD_MAX, LOG_STD_MIN, soft_update, TanhGaussianActor


@dataclass
class SACConfig:
    """Soft actor-critic hyperparameters."""
    hidden: int = param(256, "hidden width of actor and twin critics", low=1)
    layers: int = param(2, "hidden layers of actor and twin critics", low=1)
    lr: float = param(3e-4, "Adam learning rate of actor, critics and temperature", low=0, low_open=True)
    batch_size: int = param(256, "minibatch size", low=1)
    discount: float = param(0.99, "discount gamma", low=0, high=1)
    tau: float = param(0.005, "Polyak rate of the target critics", low=0, high=1, low_open=True)
    init_temperature: float = param(1.0, "initial entropy temperature alpha", low=0, low_open=True)
    target_entropy_scale: float = param(-1.0, "target entropy = scale * action dim")
    buffer_size: int = param(1_000_000, "replay buffer capacity", low=1)
    activation: str = param("relu", "activation of the actor and critic MLPs (the fork's SAC: gelu)",
                            choices=("relu", "gelu", "mish"))
    reward_scale: float = param(1.0, "reward multiplier in the TD target (the fork's SAC: 0.2)", low=0, low_open=True)
    alpha_lr: float = param(0.0, "Adam lr of log alpha; 0 = lr", low=0)
    tanh_correction: bool = param(True, "subtract the tanh Jacobian from the log-prob (the exact squashed-Gaussian "
                                  "density); False = the fork's log-prob of the pre-tanh sample")
    log_std_min: float = param(LOG_STD_MIN, "lower clip of the policy log std (the fork's SAC: -20)")
    log_std_max: float = param(LOG_STD_MAX, "upper clip of the policy log std (the fork's SAC: 0.5)")

    def check(self, prefix: str = "sac") -> None:
        if self.log_std_max < self.log_std_min:
            raise ConfigError(f"{prefix}.log_std_max={self.log_std_max} is below {prefix}.log_std_min="
                              f"{self.log_std_min}: make max >= min")

    def agent_config(self) -> "SACConfig":
        """The agent's hyperparameters alone (what a saved SAC run records)."""
        return SACConfig(**{f.name: getattr(self, f.name) for f in fields(SACConfig)})


@dataclass
class SACOnlineConfig(SACConfig):
    """SAC in the online loop (diffrl.online.train_online): the agent's hyperparameters (SACConfig)
    and the loop's. The `sac` row's section, sac_online, sets the fork's values."""
    alg: str = param("sac", "the online loop's agent: SAC", choices=("sac",))
    num_envs: int = param(5, "environments stepped side by side; one update per iteration of num_envs env steps",
                          low=1)
    warmup: int = param(30_000, "uniform-random env steps before the first update (capped by the budget's "
                        "online_warmup)", low=0)


class SAC(torch.nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig, device="cpu"):
        super().__init__()
        self.cfg, self.act_dim = cfg, act_dim
        self.actor = TanhGaussianActor(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.activation, cfg.log_std_min,
                                       cfg.log_std_max, cfg.tanh_correction)
        self.critic = Critic(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.activation)
        self.critic_target = Critic(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.activation)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.target_entropy = cfg.target_entropy_scale * act_dim
        self.to(device)
        self.actor_opt = adam(self.actor.parameters(), cfg.lr)
        self.critic_opt = adam(self.critic.parameters(), cfg.lr)
        self.alpha_opt = adam([self.log_alpha], cfg.alpha_lr or cfg.lr)

    def update(self, b: dict, generator=None) -> dict:
        cfg, alpha = self.cfg, self.log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = self.actor(b["next_obs"], generator=generator)
            q_next = self.critic_target.q_min(b["next_obs"], a2) - alpha * logp2
            target = cfg.reward_scale * b["reward"] + cfg.discount * (1 - b["terminal"]) * q_next
        q = self.critic(b["obs"], b["action"])
        critic_loss = (q - target).pow(2).mean(-1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        a, logp = self.actor(b["obs"], generator=generator)
        self.critic.requires_grad_(False)
        actor_loss = (alpha * logp - self.critic.q_min(b["obs"], a)).mean()
        self.critic.requires_grad_(True)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        soft_update(self.critic_target, self.critic, cfg.tau)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), "alpha": alpha}

    @torch.no_grad()
    def sample_actions(self, obs: torch.Tensor, generator=None, deterministic: bool = True) -> torch.Tensor:
        """Actions in [-1, 1]^d: tanh of the mean (deterministic) or of a Gaussian sample."""
        a, _ = self.actor(obs, deterministic=deterministic, generator=generator)
        return a

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True, generator=None) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.log_alpha.device)
        return self.sample_actions(o, generator, deterministic).cpu().numpy()


def train_sac(env_name: str, cfg: SACConfig, steps: int, warmup: int, eval_every: int, seed: int,
              device="cpu", eval_episodes: int = 1, medium_score: float | None = None,
              stop_at_medium: bool = False, log=None, resume_path: str | Path | None = None,
              checkpoint_every: int = 0):
    """Train SAC online for `steps` env steps: the data agent of the generated datasets.

    At the first evaluation whose score reaches `medium_score` it keeps the medium policy: a copy
    of the agent's weights, and the training episodes up to that point (the medium-replay data,
    recorded only until then); `stop_at_medium` stops the run there. Returns (agent, info, medium):
    info has env_steps, grad_steps, the evaluations, the last evaluation score and whether the
    medium score was reached; medium is {"state", "episodes", "env_steps", "score"}, or None when
    it was not reached. With `resume_path`, a checkpoint (agent, optimisers, replay buffer, env and
    RNG states, step, the medium policy) is written every `checkpoint_every` env steps, and a run
    that finds one there continues from it bit-identically on CPU.
    """
    from diffrl.runlog import NumericalError
    from diffrl.train import fingerprint, first_non_finite, load_resume, save_resume

    env = make_env(env_name)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = SAC(obs_dim, act_dim, cfg, device)
    buf = ReplayBuffer(obs_dim, act_dim, min(cfg.buffer_size, steps), device)
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    new_episode = lambda o: {"observations": [o], "actions": [], "rewards": [], "terminations": [],  # noqa: E731
                             "truncations": []}
    episodes, cur = [], new_episode(obs)
    info = {"env_steps": 0, "grad_steps": 0, "score": None, "target_reached": False, "evaluations": []}
    start = 1
    # minibatches are drawn from torch's global generator (saved with the other random states)
    generators = {"sampling": gen, "warmup": rng}
    medium = None
    fp = (fingerprint(agent, env_name, steps=steps, warmup=warmup, eval_every=eval_every, seed=seed,
                      medium_score=medium_score, stop_at_medium=stop_at_medium) if resume_path is not None else "")
    progress = load_resume(resume_path, agent, device=device, fingerprint=fp, generators=generators, buffer=buf)
    if progress is not None:
        env.close()
        env = restore_env(progress["env"])
        obs, info, episodes, cur = progress["obs"], progress["info"], progress["episodes"], progress["episode"]
        medium = progress["medium"]
        start = progress["step"] + 1
        if log is not None:
            log.bar.update(progress["step"])
        print(f"resumed from {resume_path} at env step {progress['step']}", flush=True)
    for step in range(start, steps + 1):
        if step <= warmup:
            action = rng.uniform(-1, 1, act_dim).astype(np.float32)
        else:
            action = agent.act(obs[None], deterministic=False, generator=gen)[0]
        nxt, r, term, trunc, _ = env.step(action)
        buf.add(obs=obs[None], action=action[None], reward=[r], next_obs=nxt[None], terminal=[float(term)])
        record = medium is None  # the medium-replay data: training episodes up to the medium point
        if record:
            for k, v in zip(("observations", "actions", "rewards", "terminations", "truncations"),
                            (nxt, action, r, term, trunc)):
                cur[k].append(v)
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
            if record:
                episodes.append({k: np.asarray(v) for k, v in cur.items()})
                cur = new_episode(obs)
        if step > warmup and buf.size >= cfg.batch_size:
            metrics = agent.update(buf.sample(cfg.batch_size, generator=None), generator=gen)
            info["grad_steps"] += 1
            if log is not None:
                log.log(step, metrics)
        elif log is not None:
            log.bar.update(1)
        info["env_steps"] = step
        if step % eval_every == 0 or step == steps:
            ret = float(evaluate(agent.act, env_name, eval_episodes, seed=10_000 + step).mean())
            info["score"] = float(normalized_score(env_name, ret))
            info["evaluations"].append({"env_steps": step, "return": ret, "score": info["score"]})
            if log is not None:
                log.log_eval(step, info["score"], ret)
            if medium is None and medium_score is not None and info["score"] >= medium_score:
                info["target_reached"] = True
                medium = {"state": {k: v.detach().clone() for k, v in agent.state_dict().items()},
                          "episodes": episodes, "env_steps": step, "score": info["score"]}
                if stop_at_medium:
                    break
        if resume_path is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            if log is not None and hasattr(log, "check"):
                log.check(step)  # a NaN since the last checkpoint stops here: the last good one stays
            bad = first_non_finite(agent)
            if bad is not None:
                raise NumericalError(f"non-finite weights ({bad}) at env step {step}: lower sac.lr; the last "
                                     f"good checkpoint is kept ({resume_path})")
            save_resume(resume_path, agent, fingerprint=fp, generators=generators, buffer=buf, progress={
                "env": env_state(env), "obs": obs, "info": info, "episodes": episodes, "episode": cur,
                "step": step, "medium": medium})
    env.close()
    return agent, info, medium
