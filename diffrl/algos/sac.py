"""Soft actor-critic (Haarnoja et al. 2018): the data-collection agent of the dataset stage and,
with the fork's settings, the `sac` online row. Both train in the online loop,
diffrl.train.train_online.

SACConfig's defaults are the dataset agent (2x256 ReLU, tanh-corrected log-prob, log std in
[-5, 2]; one env, one update per env step: diffrl.generate.train_data_agent). The `sac` row is the baseline of the
fork's "SAC 11114" (pnielsen2/inference_mirror_descent, relax/algorithm/sac.py, network/sac.py,
network/common.py): 3x256 exact GELU, rewards scaled by 0.2, log alpha starting at 1 (alpha = e),
alpha lr 3e-4, log std clipped to [-20, 0.5] and the log-prob of the pre-tanh Gaussian sample
WITHOUT the tanh correction. It runs in the online loop, diffrl.train.train_online (5 envs, one update
per iteration of 5 env steps), configured by a SACOnlineConfig: SACConfig and the loop's num_envs and warmup."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

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
    """SAC in the online loop (diffrl.train.train_online): the agent's hyperparameters (SACConfig)
    and the loop's. The `sac` row's section, sac_online, sets the fork's values."""
    alg: str = param("sac", "the online loop's agent: SAC", choices=("sac",))
    num_envs: int = param(5, "environments stepped side by side; one update per iteration of num_envs env steps",
                          low=1)
    warmup: int = param(30_000, "uniform-random env steps before the first update (capped by the budget's "
                        "online_warmup)", low=0)


class SAC(torch.nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig, device="cpu", action_low=None, action_high=None):
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
        # the env's action box: act maps the policy's [-1, 1] onto it, as the online loop's steps do
        low = torch.as_tensor(-np.ones(act_dim) if action_low is None else action_low, dtype=torch.float32)
        high = torch.as_tensor(np.ones(act_dim) if action_high is None else action_high, dtype=torch.float32)
        self.register_buffer("action_low", low.clone())
        self.register_buffer("action_high", high.clone())
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
        """Actions on the env's box (the policy's [-1, 1] mapped onto action_low..action_high)."""
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.log_alpha.device)
        a = self.sample_actions(o, generator, deterministic)
        return (self.action_low + (a + 1) * 0.5 * (self.action_high - self.action_low)).cpu().numpy()
