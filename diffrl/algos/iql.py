"""Implicit Q-learning (Kostrikov et al. 2022): the `iql` row (`IQL`: the critic and its
advantage-weighted (AWR) policy) and the critics that DTQL and EDA pretrain and load (`IQLCritic`:
the critic step alone).

Two details of the critic step differ between the released codes and are config fields:
- `value_target`: V regresses on min Q of the target critic (IQL, EDA) or of the online critic
  (DTQL's agents/dtql.py, whose target critic only serves action selection).
- `joint_step`: V and Q losses are taken from the same pre-step networks and stepped after one
  backward pass, so Q's target r + gamma V(s') uses V before this step's V update (DTQL; EDA's
  released critic also takes V(s') before its V step). Off, V is stepped first and Q's target uses
  the updated V (IQL's released learner).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffrl.fields import param
from diffrl.nets import adam, Critic, GaussianActor, soft_update, ValueNet


@dataclass
class IQLConfig:
    """IQL critic and AWR policy (losses in docs/algorithms.md, "IQL")."""
    expectile: float = param(0.7, "expectile tau of the value loss", low=0, high=1, low_open=True, high_open=True)
    temperature: float = param(3.0, "AWR inverse temperature beta: weights exp(beta (Q - V))", low=0, low_open=True)
    max_weight: float = param(100.0, "clip of the AWR weights", low=0, low_open=True)
    discount: float = param(0.99, "discount gamma", low=0, high=1)
    tau: float = param(0.005, "Polyak rate of the target critic", low=0, high=1, low_open=True)
    lr: float = param(3e-4, "Adam learning rate of Q, V and the policy", low=0, low_open=True)
    batch_size: int = param(256, "minibatch size", low=1)
    hidden: int = param(256, "hidden width of Q and V", low=1)
    layers: int = param(2, "hidden layers of Q and V (the official IQL's 2x256)", low=1)
    activation: str = param("relu", "activation of Q and V (the official IQL's ReLU)", choices=("mish", "relu", "silu"))
    layer_norm: bool = param(False, "LayerNorm in Q (DTQL's critic uses it)")
    policy_hidden: int = param(256, "hidden width of the AWR policy", low=1)
    reward_scaling: str = param("locomotion", "locomotion: r * 1000 / (max - min episode return); none",
                                choices=("locomotion", "none"))
    value_target: str = param("target", "critic whose min(Q1, Q2) V regresses on: target (IQL, EDA) or online "
                              "(DTQL's released code)", choices=("target", "online"))
    joint_step: bool = param(False, "V and Q losses from the same pre-step networks, one backward pass, then "
                             "both steps (DTQL's and EDA's released critics); false: V is stepped first and "
                             "Q's target uses the updated V (IQL's released code)")
    actor_lr_decay: bool = param(True, "cosine-decay the AWR policy's lr to 0 over the run's steps, Q's and V's "
                                 "constant (the official IQL); false: constant")
    policy_value: str = param("updated", "V in the AWR weights exp(beta (Q - V)): after this step's V update (the "
                              "official IQL) or before it (pre_step)", choices=("updated", "pre_step"))


# The official IQL (ikostrikov/implicit_q_learning, commit 09d7002) is IQLConfig's defaults: hidden_dims
# (256, 256) with ReLU (configs/mujoco_config.py:11; common.py:28-43), expectile 0.7, temperature 3.0,
# lrs 3e-4, discount 0.99, tau 0.005 (lines 7-19); the actor's lr decays by a cosine to 0 over the run
# (learner.py:85-90), Q's and V's stay constant (learner.py:96-104); V is updated first, then the actor
# (on the updated V) and Q (learner.py:_update_jit). Its locomotion config is one for every task:
# nothing per task (README.md:35-38). The dtql_critic and eda_critic sections (IQLConfig too) follow
# DTQL's and EDA's own code, which sets nothing per locomotion task either.
PUBLISHED_TASKS = {task: {} for task in (
    "halfcheetah-medium", "hopper-medium", "walker2d-medium", "halfcheetah-medium-replay", "hopper-medium-replay",
    "walker2d-medium-replay", "halfcheetah-medium-expert", "hopper-medium-expert", "walker2d-medium-expert")}
# The 1M steps (train_offline.py:26) are the budget's.


class IQL(torch.nn.Module):
    name = "iql"
    # constructor arguments beyond the config (diffrl.offline.build_agent); total_steps: actor_lr_decay's length
    extra_args = ("reward_scale", "total_steps")
    config_cls = IQLConfig

    def __init__(self, obs_dim: int, act_dim: int, cfg: IQLConfig, device="cpu", reward_scale: float = 1.0,
                 total_steps: int = 0):
        super().__init__()
        self.cfg, self.reward_scale, self.total_steps = cfg, reward_scale, int(total_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        kw = dict(hidden=cfg.hidden, layers=cfg.layers, act=cfg.activation)
        self.q = Critic(obs_dim, act_dim, layer_norm=cfg.layer_norm, **kw)
        self.q_target = Critic(obs_dim, act_dim, layer_norm=cfg.layer_norm, **kw)
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.v = ValueNet(obs_dim, **kw)
        self.policy = GaussianActor(obs_dim, act_dim, cfg.policy_hidden, 2, "relu")
        self.to(device)
        self.q_opt = adam(self.q.parameters(), cfg.lr)
        self.v_opt = adam(self.v.parameters(), cfg.lr)
        self.pi_opt = adam(self.policy.parameters(), cfg.lr)

    def critic_step(self, b: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """V (expectile of min Q - V) and Q (r + gamma (1 - d) V(s')) steps and the Polyak target
        update; `value_target` and `joint_step` select the variant (module docstring). Returns
        (metrics, min Q_target(s, a), V(s)) for the AWR policy step; DTQL calls this alone, as it
        needs the critic without the AWR policy."""
        cfg = self.cfg
        with torch.no_grad():
            q_t = self.q_target.q_min(b["obs"], b["action"])
            q_for_v = q_t if cfg.value_target == "target" else self.q.q_min(b["obs"], b["action"])
        v = self.v(b["obs"])
        u = q_for_v - v
        v_loss = ((cfg.expectile - (u < 0).float()).abs() * u.pow(2)).mean()
        if not cfg.joint_step:
            self.v_opt.zero_grad(set_to_none=True)
            v_loss.backward()
            self.v_opt.step()
        with torch.no_grad():
            target = self.reward_scale * b["reward"] + cfg.discount * (1 - b["terminal"]) * self.v(b["next_obs"])
        q = self.q(b["obs"], b["action"])
        q_loss = (q - target).pow(2).mean(-1).sum()
        if cfg.joint_step:
            # V's and Q's losses share no parameters (Q's target is detached), so the summed backward
            # gives each net its own loss's gradient; separate Adams equal one Adam over both
            self.v_opt.zero_grad(set_to_none=True)
            self.q_opt.zero_grad(set_to_none=True)
            (v_loss + q_loss).backward()
            self.v_opt.step()
            self.q_opt.step()
        else:
            self.q_opt.zero_grad(set_to_none=True)
            q_loss.backward()
            self.q_opt.step()
        soft_update(self.q_target, self.q, cfg.tau)
        return {"v_loss": v_loss.detach(), "q_loss": q_loss.detach(), "q_mean": q_t.mean()}, q_t, v.detach()

    def update(self, b: dict, generator=None) -> dict:
        cfg = self.cfg
        if cfg.actor_lr_decay:  # optax's cosine_decay_schedule: lr0 (1 + cos(pi k / T)) / 2 at step k
            if self.total_steps <= 0:
                raise ValueError("iql.actor_lr_decay is on but the run's length is unknown: pass total_steps to IQL")
            k = min(int(self.step), self.total_steps)
            for group in self.pi_opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * k / self.total_steps))
        metrics, q_t, v = self.critic_step(b)
        if cfg.policy_value == "updated":
            with torch.no_grad():
                v = self.v(b["obs"])
        # AWR policy: maximise exp(beta A) log pi(a|s)
        w = torch.exp(cfg.temperature * (q_t - v)).clamp(max=cfg.max_weight)
        pi_loss = -(w * self.policy.log_prob(b["obs"], b["action"])).mean()
        self.pi_opt.zero_grad(set_to_none=True)
        pi_loss.backward()
        self.pi_opt.step()
        self.step += 1
        return {**metrics, "pi_loss": pi_loss.detach()}

    @torch.no_grad()
    def act(self, obs: np.ndarray, generator=None) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.v.net[0].weight.device)
        return self.policy(o).cpu().numpy()


class IQLCritic(IQL):
    """The critic as DTQL and EDA pretrain and load it: each update is the critic step alone. The AWR
    policy is still built, untrained, so that the networks and the random draws of building one are
    the `iql` row's (a composite row that builds this critic and then its own policy initialises
    that policy the same way either way)."""

    def update(self, b: dict, generator=None) -> dict:
        return self.critic_step(b)[0]
