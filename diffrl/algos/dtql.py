"""Diffusion Trusted Q-Learning (DTQL, Chen, Wang & Zhou 2024): an EDM-preconditioned behaviour
diffusion model creates a trust region for a one-step tanh-Gaussian policy.

Stages: `EDMBehavior` (behaviour pretraining) and the IQL critic (diffrl.algos.iql, LayerNorm Q)
are pretrained separately and handed to `DTQL`, which then trains the one-step policy with

    L_actor = alpha * L_TR(a_pi) - Q_min(s, a_pi)  (+ gamma_nll * NLL of the dataset action),

where L_TR is the behaviour diffusion loss evaluated at the policy's action with the behaviour
net frozen (a random noise level per sample), while it keeps training the IQL critic
(target r + gamma V(s')) and, as the released DTQL does, the behaviour model itself.
Losses and hyperparameters: docs/algorithms.md, section "DTQL".

As in the released code (TianyuCodings/Diffusion_Trusted_Q_Learning), by default: the score net's
first hidden layer has no activation (3 nonlinearities for 4 hidden layers) and embeds
c_noise = ln(sigma)/4 as it is (`first_layer_activation`, `noise_embed_scale` give a Mish after
every layer and a scaled embedding); the one-step policy starts from orthogonal weights and zero
biases (`orthogonal_init`). The critic's variant (raw rewards, V on the online critic, one V+Q
backward pass) is set in params.yaml's dtql_critic section (diffrl.algos.iql).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from diffrl.algos.iql import IQLConfig, IQLCritic
from diffrl.fields import ConfigError, param
from diffrl.nets import adam, LOG_STD_MAX, LOG_STD_MIN, mlp, orthogonal_init_, SinusoidalEmbedding, TanhGaussianActor


# --------------------------------------------------------------------------- EDM behaviour model
@dataclass
class DTQLBehaviorConfig:
    """DTQL's behaviour diffusion: EDM (Karras et al. 2022) preconditioning of a denoiser D(x; sigma, s)."""
    sigma_data: float = param(0.5, "EDM sigma_data (assumed std of the actions)", low=0, low_open=True)
    sigma_min: float = param(0.002, "smallest noise level (training truncation and sampler end)", low=0,
                             low_open=True)
    sigma_max: float = param(80.0, "largest noise level (training truncation and sampler start)", low=0,
                             low_open=True)
    log_sigma_loc: float = param(math.log(0.5), "location of the logistic law of ln(sigma) in training "
                                 "(reference ln sigma_data = ln 0.5)")
    log_sigma_scale: float = param(0.5, "scale of the logistic law of ln(sigma) in training", low=0,
                                   low_open=True)
    clamp_denoised: bool = param(True, "clamp D to [-1, 1] in the loss and the sampler (DTQL's clip_denoised)")
    hidden: int = param(256, "hidden width of the score net F", low=1)
    layers: int = param(4, "hidden layers of the score net F", low=1)
    first_layer_activation: bool = param(False, "Mish after the score net's first hidden layer too (layers "
                                         "nonlinearities); false: the first layer is linear (layers - 1 "
                                         "nonlinearities, the released ScoreNetwork)")
    t_dim: int = param(16, "noise-level embedding width (even)", low=4)
    noise_embed_scale: float = param(1.0, "factor on c_noise = ln(sigma)/4 before the sinusoidal embedding "
                                     "(released code 1; 100 spreads c_noise, about [-1.6, 1.1], over the "
                                     "embedding's frequencies)", low=0, low_open=True)
    lr: float = param(3e-4, "Adam learning rate", low=0, low_open=True)
    batch_size: int = param(256, "minibatch size", low=1)
    sample_steps: int = param(18, "noise levels of the deterministic Heun sampler used by act() "
                              "(EDM default 18)", low=1)
    rho: float = param(7.0, "Karras schedule exponent of the sampler's noise levels", low=0, low_open=True)
    heun: bool = param(True, "second-order (Heun) correction in the sampler; false = Euler")

    def check(self, prefix: str) -> None:
        if self.sigma_min >= self.sigma_max:
            raise ConfigError(f"{prefix}.sigma_min={self.sigma_min} must be below {prefix}.sigma_max={self.sigma_max}")


class EDMScoreNet(nn.Module):
    """F(c_in x, c_noise, s): noise-level embedding (sinusoidal of noise_scale * c_noise -> Linear 2t
    -> Mish -> Linear t), then concat(x, emb, s) -> `layers` x [Linear hidden, Mish] -> action dim,
    where the first Mish is an identity unless `first_activation` (the released net's first two
    linear layers compose)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int, t_dim: int,
                 first_activation: bool = False, noise_scale: float = 1.0):
        super().__init__()
        self.noise_scale = noise_scale
        self.emb = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, 2 * t_dim), nn.Mish(),
                                 nn.Linear(2 * t_dim, t_dim))
        self.net = mlp(act_dim + t_dim + obs_dim, act_dim, hidden, layers, "mish")
        if not first_activation:
            # an Identity in the activation's slot keeps the Linear layers' state_dict keys of both forms
            self.net[1] = nn.Identity()

    def forward(self, x, c_noise, obs):
        return self.net(torch.cat([x, self.emb(c_noise * self.noise_scale), obs], -1))


def edm_scalings(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of EDM's preconditioning, each shaped like sigma."""
    s2, d2 = sigma ** 2, sigma_data ** 2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def sample_log_logistic(n: int, loc: float, scale: float, lo: float, hi: float, device, generator=None):
    """sigma with ln(sigma) ~ Logistic(loc, scale) truncated to [lo, hi] (inverse-CDF sampling)."""
    cdf = lambda v: 1 / (1 + math.exp(-(math.log(v) - loc) / scale))  # noqa: E731
    u = torch.rand(n, device=device, generator=generator, dtype=torch.float64)
    u = cdf(lo) + u * (cdf(hi) - cdf(lo))
    return (loc + scale * torch.logit(u)).exp().clamp(lo, hi).float()


class EDMBehavior(nn.Module):
    """Behaviour diffusion with EDM preconditioning: D = c_skip x + c_out F(c_in x, ln(sigma)/4, s),
    L_bc = ||(clamp(D, -1, 1) - a) / c_out||^2 (averaged over action dims and batch)."""
    name = "dtql_behavior"

    def __init__(self, obs_dim: int, act_dim: int, cfg: DTQLBehaviorConfig, device="cpu"):
        super().__init__()
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.net = EDMScoreNet(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.t_dim, cfg.first_layer_activation,
                               cfg.noise_embed_scale)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.to(device)
        self.opt = adam(self.net.parameters(), cfg.lr)

    @property
    def device(self):
        return self.step.device

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, obs: torch.Tensor, clamp: bool | None = None):
        """D(x; sigma, s); sigma has shape (B,)."""
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.cfg.sigma_data)
        d = c_skip[:, None] * x + c_out[:, None] * self.net(c_in[:, None] * x, c_noise, obs)
        clamp = self.cfg.clamp_denoised if clamp is None else clamp
        return d.clamp(-1, 1) if clamp else d

    def sample_sigma(self, n: int, generator=None) -> torch.Tensor:
        c = self.cfg
        return sample_log_logistic(n, c.log_sigma_loc, c.log_sigma_scale, c.sigma_min, c.sigma_max,
                                   self.device, generator)

    def loss(self, action: torch.Tensor, obs: torch.Tensor, generator=None, reduce: bool = True):
        """EDM loss at a random sigma per sample; differentiable in `action` (DTQL's L_TR uses that)."""
        sigma = self.sample_sigma(action.shape[0], generator)
        noise = torch.randn(action.shape, device=action.device, generator=generator)
        x = action + sigma[:, None] * noise
        _, c_out, _, _ = edm_scalings(sigma, self.cfg.sigma_data)
        per = ((self.denoise(x, sigma, obs) - action) / c_out[:, None]).pow(2).mean(-1)
        return per.mean() if reduce else per

    def update(self, b: dict, generator=None) -> dict:
        loss = self.loss(b["action"], b["obs"], generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return {"bc_loss": loss.detach()}

    def sigma_schedule(self, steps: int | None = None) -> torch.Tensor:
        """Karras noise levels sigma_max -> sigma_min (rho spacing), then 0."""
        c = self.cfg
        n = c.sample_steps if steps is None else steps
        i = torch.arange(n, dtype=torch.float64, device=self.device)
        ramp = i / max(n - 1, 1)
        sig = (c.sigma_max ** (1 / c.rho) + ramp * (c.sigma_min ** (1 / c.rho) - c.sigma_max ** (1 / c.rho))) ** c.rho
        return torch.cat([sig, sig.new_zeros(1)]).float()

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator=None, steps: int | None = None) -> torch.Tensor:
        """Deterministic EDM probability-flow sampler (Heun or Euler) from x ~ sigma_max N(0, I)."""
        sig = self.sigma_schedule(steps)
        B = obs.shape[0]
        x = sig[0] * torch.randn((B, self.act_dim), device=obs.device, generator=generator)
        for i in range(len(sig) - 1):
            s, s_next = sig[i], sig[i + 1]
            d = (x - self.denoise(x, s.expand(B), obs)) / s
            x_next = x + (s_next - s) * d
            if self.cfg.heun and s_next > 0:
                d2 = (x_next - self.denoise(x_next, s_next.expand(B), obs)) / s_next
                x_next = x + (s_next - s) * 0.5 * (d + d2)
            x = x_next
        return x.clamp(-1, 1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, generator=None) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.sample(o, generator).cpu().numpy()


# --------------------------------------------------------------------------- DTQL agent
@dataclass
class DTQLConfig:
    """DTQL one-step policy. Its reference's per-task alpha, lr and lr decay are PUBLISHED_TASKS below."""
    alpha: float = param(1.0, "trust-region weight alpha (the reference's per-task values: PUBLISHED_TASKS; "
                         "halfcheetah-medium's 1 elsewhere)", low=0)
    gamma_nll: float = param(0.0, "weight of the NLL of the dataset action under the policy (0 for MuJoCo)",
                             low=0)
    lr: float = param(3e-4, "Adam learning rate of the one-step policy (and, per task, of the behaviour model)",
                      low=0, low_open=True)
    lr_decay: bool = param(False, "cosine-decay the learning rates of the policy, the behaviour model and the critic "
                           "to 0 over the run's policy steps (the reference's lr_decay, on for hopper-medium and "
                           "the walker2d tasks)")
    batch_size: int = param(256, "minibatch size", low=1)
    hidden: int = param(256, "hidden width of the one-step policy", low=1)
    layers: int = param(3, "hidden layers (ReLU) of the one-step policy", low=1)
    orthogonal_init: bool = param(True, "orthogonal weights and zero biases in the one-step policy (the released "
                                  "agents/model.py); false: PyTorch's default Linear init")
    eval_candidates: int = param(1024, "policy samples per state at evaluation, one picked ~ softmax(Q)", low=1)
    eval_temperature: float = param(1.0, "softmax temperature of the candidate pick (reference 1)", low=0,
                                    low_open=True)
    eval_chunk: int = param(65536, "candidates evaluated per batched forward pass at evaluation", low=1)
    update_critic: bool = param(True, "keep training the IQL critic (V and Q) during policy training")
    update_behavior: bool = param(True, "keep training the behaviour diffusion during policy training "
                                  "(the released DTQL does)")


# Published per-task settings: task (D4RL id without version) -> {section: {field: value}}; a task listed
# with {} publishes nothing that differs from the dataclass defaults.
# TianyuCodings/Diffusion_Trusted_Q_Learning main.py:18-45 (`offline_hyperparameters`, locomotion rows
# 19-27; read at main.py:173-179), commit 9a29cea. lr is the one-step policy's and the behaviour model's
# (agents/dtql.py:54, 69, also in the 50k pretraining steps, agents/dtql.py:101-108); the critic's Adam
# keeps 3e-4 (agents/dtql.py:39), the dtql_critic default. lr_decay: CosineAnnealingLR(T_max = the policy
# steps, eta_min 0) on the critic's, the behaviour model's and the policy's Adam (main.py:60,
# agents/dtql.py:83-86), stepped after every policy-phase step (agents/dtql.py:172-176).
PUBLISHED_TASKS = {
    "halfcheetah-medium": {},                                                  # alpha 1 (the default)
    "halfcheetah-medium-replay": {"dtql": {"alpha": 5.0}},
    "halfcheetah-medium-expert": {"dtql": {"alpha": 50.0}},
    "hopper-medium": {"dtql": {"alpha": 5.0, "lr": 1e-4, "lr_decay": True}, "dtql_behavior": {"lr": 1e-4}},
    "hopper-medium-replay": {"dtql": {"alpha": 5.0}},
    "hopper-medium-expert": {"dtql": {"alpha": 20.0}},
    "walker2d-medium": {"dtql": {"alpha": 5.0, "lr_decay": True}},
    "walker2d-medium-replay": {"dtql": {"alpha": 5.0, "lr_decay": True}},
    "walker2d-medium-expert": {"dtql": {"alpha": 5.0, "lr_decay": True}},
}
# Nothing else to state: gamma 0.0 (gamma_nll's default), expectile 0.7 (dtql_critic's), batch_size 256.
# The schedule (pretrain_epochs 50 x 1000 joint behaviour + critic steps, then num_epochs 1000 x 1000
# policy steps; main.py:68-81, 150, 159) is the budget's (docs/budgets.md).


def tanh_gaussian_log_prob(actor: TanhGaussianActor, obs: torch.Tensor, action: torch.Tensor,
                           eps: float = 1e-6) -> torch.Tensor:
    """log pi(a|s) of a dataset action under TanhGaussianActor (with the tanh correction)."""
    mu, log_std = actor.net(obs).chunk(2, -1)
    log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    a = action.clamp(-1 + eps, 1 - eps)
    z = torch.atanh(a)
    logp = (-0.5 * ((z - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return logp - (2 * (math.log(2) - z - F.softplus(-2 * z))).sum(-1)


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Parameters of `modules` take no gradient inside the block (inputs still do); flags restored after."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class DTQL(nn.Module):
    """One-step tanh-Gaussian policy in the trust region of a pretrained EDM behaviour model.

    `behavior` (EDMBehavior) and `critic` (IQLCritic, reference IQLConfig(layer_norm=True)) are the
    pretrained stage outputs; they become submodules (their weights are in this agent's state_dict),
    and their optimisers are exposed as `bc_opt`, `q_opt`, `v_opt` so that checkpoints resume them.
    """
    name = "dtql"

    extra_args = ("total_steps",)  # constructor arguments beyond the config (diffrl.offline.build_agent)

    def __init__(self, obs_dim: int, act_dim: int, cfg: DTQLConfig, behavior: EDMBehavior, critic: IQLCritic,
                 device="cpu", total_steps: int = 0):
        super().__init__()
        self.total_steps = int(total_steps)  # lr_decay's length: the run's policy steps
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.behavior, self.critic = behavior, critic
        self.actor = TanhGaussianActor(obs_dim, act_dim, cfg.hidden, cfg.layers, "relu")
        if cfg.orthogonal_init:
            orthogonal_init_(self.actor)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.to(device)
        self.actor_opt = adam(self.actor.parameters(), cfg.lr)
        self.bc_opt = behavior.opt
        self.q_opt, self.v_opt = critic.q_opt, critic.v_opt

    @classmethod
    def from_configs(cls, obs_dim: int, act_dim: int, cfg: DTQLConfig, behavior_cfg: DTQLBehaviorConfig,
                     critic_cfg: IQLConfig, device="cpu", reward_scale: float = 1.0, total_steps: int = 0) -> "DTQL":
        """A fresh agent with untrained behaviour and critic shells (for loading a whole DTQL checkpoint)."""
        return cls(obs_dim, act_dim, cfg, EDMBehavior(obs_dim, act_dim, behavior_cfg, device),
                   IQLCritic(obs_dim, act_dim, critic_cfg, device, reward_scale), device, total_steps)

    def _decay_lr(self) -> None:
        """lr_decay: every optimiser's lr at lr0 (1 + cos(pi k / T)) / 2 before policy step k of T, the
        closed form of the reference's CosineAnnealingLR stepped after each step (eta_min 0); its start
        lr lives in the optimiser's state, so a resumed run continues the same schedule."""
        if self.total_steps <= 0:
            raise ConfigError("dtql.lr_decay is on but the run's length is unknown: pass total_steps to DTQL")
        k = min(int(self.step), self.total_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * k / self.total_steps))
        for opt in (self.actor_opt, self.bc_opt, self.q_opt, self.v_opt):
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor

    def update(self, b: dict, generator=None) -> dict:
        cfg, out = self.cfg, {}
        if cfg.lr_decay:
            self._decay_lr()
        if cfg.update_critic:
            out.update(self.critic.critic_step(b)[0])
        if cfg.update_behavior:
            out.update(self.behavior.update(b, generator))
        # actor: alpha * L_TR(a_pi) - Q_min(s, a_pi) (+ gamma_nll * NLL); behaviour and Q frozen
        with frozen(self.behavior, self.critic.q):
            a, _ = self.actor(b["obs"], generator=generator)
            tr_loss = self.behavior.loss(a, b["obs"], generator)
            q_pi = self.critic.q.q_min(b["obs"], a).mean()
            actor_loss = cfg.alpha * tr_loss - q_pi
            if cfg.gamma_nll > 0:
                nll = -tanh_gaussian_log_prob(self.actor, b["obs"], b["action"]).mean()
                actor_loss = actor_loss + cfg.gamma_nll * nll
                out["nll"] = nll.detach()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.step += 1
        out.update(actor_loss=actor_loss.detach(), tr_loss=tr_loss.detach(), q_pi=q_pi.detach())
        return out

    # What the evaluated policy samples with: not a DDPM chain (diffrl/algos/tilted.py has nothing to guide).
    eval_sampler = "DTQL's one-step tanh-Gaussian policy"

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """Samples of the evaluated one-step policy."""
        return self.actor(obs, generator=generator)[0]

    @torch.no_grad()
    def select(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """Per state: `eval_candidates` policy samples, one drawn ~ softmax(min Q_target / temperature)."""
        return self.choose(obs, self.sample, generator)

    @torch.no_grad()
    def choose(self, obs: torch.Tensor, draw, generator=None) -> torch.Tensor:
        """The evaluation choice over candidates `draw(obs_repeated, generator)`: eval_candidates per
        state, one drawn ~ softmax(min Q_target / eval_temperature), states in chunks of eval_chunk //
        eval_candidates. select's only path, so a tilted row that draws otherwise chooses exactly as
        this row does, generator draw for generator draw."""
        cfg, N = self.cfg, self.cfg.eval_candidates
        per_chunk = max(1, cfg.eval_chunk // N)
        out = []
        for o in obs.split(per_chunk):
            rep = o.repeat_interleave(N, 0)
            a = draw(rep, generator)
            q = self.critic.q_target.q_min(rep, a).view(len(o), N)
            idx = torch.multinomial(torch.softmax(q / cfg.eval_temperature, -1), 1, generator=generator)
            out.append(a.view(len(o), N, -1)[torch.arange(len(o), device=o.device), idx[:, 0]])
        return torch.cat(out)

    @torch.no_grad()
    def act(self, obs: np.ndarray, generator=None) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.step.device)
        squeeze = o.dim() == 1
        a = self.select(o[None] if squeeze else o, generator)
        return (a[0] if squeeze else a).cpu().numpy()
