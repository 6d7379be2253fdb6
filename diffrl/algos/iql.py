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
    layers: int = param(3, "hidden layers of Q and V", low=1)
    activation: str = param("mish", "activation of Q and V", choices=("mish", "relu", "silu"))
    layer_norm: bool = param(False, "LayerNorm in Q (DTQL's critic uses it)")
    policy_hidden: int = param(256, "hidden width of the AWR policy", low=1)
    reward_scaling: str = param("locomotion", "locomotion: r * 1000 / (max - min episode return); none",
                                choices=("locomotion", "none"))
    value_target: str = param("target", "critic whose min(Q1, Q2) V regresses on: target (IQL, EDA) or online "
                              "(DTQL's released code)", choices=("target", "online"))
    joint_step: bool = param(False, "V and Q losses from the same pre-step networks, one backward pass, then "
                             "both steps (DTQL's and EDA's released critics); false: V is stepped first and "
                             "Q's target uses the updated V (IQL's released code)")


class IQL(torch.nn.Module):
    name = "iql"
    extra_args = ("reward_scale",)  # constructor arguments beyond the config (diffrl.offline.build_agent)
    config_cls = IQLConfig

    def __init__(self, obs_dim: int, act_dim: int, cfg: IQLConfig, device="cpu", reward_scale: float = 1.0):
        super().__init__()
        self.cfg, self.reward_scale = cfg, reward_scale
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
        metrics, q_t, v = self.critic_step(b)
        # AWR policy: maximise exp(beta A) log pi(a|s)
        w = torch.exp(self.cfg.temperature * (q_t - v)).clamp(max=self.cfg.max_weight)
        pi_loss = -(w * self.policy.log_prob(b["obs"], b["action"])).mean()
        self.pi_opt.zero_grad(set_to_none=True)
        pi_loss.backward()
        self.pi_opt.step()
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
