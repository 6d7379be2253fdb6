"""Efficient Diffusion Alignment (EDA, Chen et al. 2024): a diffusion behaviour model whose noise
prediction is the action gradient of a scalar network, eps_theta = -sigma_t grad_a f_theta(a_t, t, s),
so that differences of f between two such models are log-density ratios. Alignment then fine-tunes
a copy pi of the behaviour model mu by classification over M behaviour samples per state:

    p_i = softmax_i(alpha Q(s, a_i)),  logits_i = beta (f_pi(a_t^i, t, s) - f_mu(a_t^i, t, s)),
    L = cross-entropy(p, softmax(logits)),

whose optimum is pi proportional to mu exp((alpha / beta) Q).
Stages: IQL critic (diffrl.algos.iql) -> `BottleneckBehavior` -> `EDAAlign`.

As in the released code, the M behaviour samples of every dataset state (the "support actions")
are drawn once, before the first alignment step (`EDAAlign.prepare`), and alignment minibatches
are states with their support actions; the costly 15-step sampler then never runs inside the
training loop. On small compute budgets the support set covers a random subset of the states
(`support_states`, the budget's `align_support_states`; 0 = every state, as released).
Math and reference hyperparameters: docs/algorithms.md, section "EDA".

As in the released code (thu-ml/Efficient-Diffusion-Alignment), by default: the energy net embeds
t with random Fourier features (scale 30) -> Linear 32 -> SiLU -> Linear 32 (`time_embedding`),
and the sampler is DPM-Solver's single-step order-2 method with data prediction on a grid uniform
in time, clipping nothing (`solver`, `skip_type`, `clip_x0` select the multistep DPM-Solver++(2M)
on a log-SNR grid with x0 clipped to [-1, 1] instead).

Unlike the released code, the policy energy is computed with gradients (the release evaluates it
under no_grad, so its alignment loss cannot backpropagate); `released_no_grad_bug` reproduces that.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from diffrl.algos.iql import IQLConfig, IQLCritic
from diffrl.diffusion import dpm_solver_2m
from diffrl.fields import param
from diffrl.nets import adam, SinusoidalEmbedding


# --------------------------------------------------------------------------- continuous VP-SDE
class VPSDE:
    """Linear-beta VP-SDE: log alpha_t = -t^2 (beta1 - beta0)/4 - t beta0/2, sigma_t = sqrt(1 - alpha_t^2),
    half log-SNR lambda_t = log alpha_t - log sigma_t."""

    def __init__(self, beta0: float = 0.1, beta1: float = 20.0):
        self.beta0, self.beta1 = beta0, beta1

    def log_alpha(self, t):
        return -t ** 2 * (self.beta1 - self.beta0) / 4 - t * self.beta0 / 2

    def alpha_sigma(self, t):
        la = self.log_alpha(t)
        return la.exp(), (-torch.expm1(2 * la)).sqrt()

    def lam(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def t_of_lam(self, lam):
        """Inverse of lambda_t: log alpha = -log(1 + e^{-2 lambda})/2, then the quadratic in t."""
        la = -0.5 * torch.nn.functional.softplus(-2 * lam)
        a, b = (self.beta1 - self.beta0) / 4, self.beta0 / 2
        return -2 * la / (b + torch.sqrt(b ** 2 - 4 * a * la))


def singlestep_orders(steps: int, order: int) -> list[int]:
    """Orders of the singlestep solver's intervals; they sum to `steps` model evaluations. Order 2
    follows DPM-Solver's released split: second-order intervals, then one first-order interval
    when `steps` is odd, two when it is even."""
    if order == 1:
        return [1] * steps
    if steps % 2:
        return [2] * (steps // 2) + [1]
    return [2] * (steps // 2 - 1) + [1, 1]


def _time_grid(sde: VPSDE, n_int: int, t_start: float, t_end: float, skip: str, device) -> tuple:
    """(times, alpha, sigma, lambda) at n_int + 1 times from t_start down to t_end, uniform in t (skip
    "time") or in lambda ("logSNR"); computed in float64, alpha, sigma and lambda returned in float32."""
    t0, t1 = torch.tensor(t_start, dtype=torch.float64), torch.tensor(t_end, dtype=torch.float64)
    if skip == "logSNR":
        ts = sde.t_of_lam(torch.linspace(float(sde.lam(t0)), float(sde.lam(t1)), n_int + 1, dtype=torch.float64))
    elif skip == "time":
        ts = torch.linspace(t_start, t_end, n_int + 1, dtype=torch.float64)
    else:
        raise ValueError(f"unknown skip type '{skip}': choose logSNR or time")
    ts = ts.to(device)
    lams = sde.lam(ts)
    al, sg = sde.alpha_sigma(ts)
    return ts, al.float(), sg.float(), lams.float()


def _clip(x: torch.Tensor, clip: float | None) -> torch.Tensor:
    return x.clamp(-clip, clip) if clip is not None else x


def dpm_pp_2s(eps_fn, x, sde: VPSDE, steps: int, order: int, t_start: float, t_end: float, skip: str,
              clip: float | None) -> torch.Tensor:
    """dpm++2s, the released EDA sampler (DPM-Solver's `singlestep`, predict_x0=True): DPM-Solver++(2S)."""
    orders = singlestep_orders(steps, order)
    ts, al, sg, lams = _time_grid(sde, steps, t_start, t_end, skip, x.device)
    B = x.shape[0]
    tt = lambda i: ts[i].float().expand(B)  # noqa: E731
    x0_of = lambda xc, i, eps: _clip((xc - sg[i] * eps) / al[i], clip)  # noqa: E731
    i = 0
    for o in orders:
        j = i + o  # this interval runs from grid time i to grid time j
        h = lams[j] - lams[i]
        x0 = x0_of(x, i, eps_fn(x, tt(i)))
        if o == 2:
            k = i + 1  # intermediate point at the middle grid time, r1 = its share of h
            r1 = (lams[k] - lams[i]) / h
            x_mid = (sg[k] / sg[i]) * x - al[k] * torch.expm1(-(lams[k] - lams[i])) * x0
            x0_mid = x0_of(x_mid, k, eps_fn(x_mid, tt(k)))
            x0 = x0 + (0.5 / r1) * (x0_mid - x0)
        x = (sg[j] / sg[i]) * x - al[j] * torch.expm1(-h) * x0
        i = j
    return _clip(x, clip)


def dpm_pp_2m(eps_fn, x, sde: VPSDE, steps: int, order: int, t_start: float, t_end: float, skip: str,
              clip: float | None) -> torch.Tensor:
    """dpm++2m, DPM-Solver++(2M) (Lu et al. 2022): multistep, data prediction, the first step first order."""
    ts, al, sg, lams = _time_grid(sde, steps, t_start, t_end, skip, x.device)
    B = x.shape[0]
    tt = lambda i: ts[i].float().expand(B)  # noqa: E731
    x0_of = lambda xc, i: _clip((xc - sg[i] * eps_fn(xc, tt(i))) / al[i], clip)  # noqa: E731
    # the shared multistep update (diffrl.diffusion.dpm_solver_2m)
    return _clip(dpm_solver_2m(x, x0_of, al, sg, lams, first_order=order == 1), clip)


def dpm_2(eps_fn, x, sde: VPSDE, steps: int, order: int, t_start: float, t_end: float, skip: str,
          clip: float | None) -> torch.Tensor:
    """dpm2, single-step DPM-Solver-2 (Lu et al. 2022): noise prediction, midpoint r = 1/2 in log-SNR."""
    if order == 2:  # steps // 2 second-order intervals, one first-order interval when steps is odd
        n_int, orders = (steps + 1) // 2, [2] * (steps // 2) + [1] * (steps % 2)
    else:
        n_int, orders = steps, [1] * steps
    ts, al, sg, lams = _time_grid(sde, n_int, t_start, t_end, skip, x.device)
    B = x.shape[0]
    for i in range(n_int):
        eps = eps_fn(x, ts[i].float().expand(B))
        h = lams[i + 1] - lams[i]
        if orders[i] == 2:
            lam_mid = lams[i] + 0.5 * h
            t_mid = sde.t_of_lam(lam_mid.double())
            a_mid, s_mid = (v.float() for v in sde.alpha_sigma(t_mid))
            x_mid = (a_mid / al[i]) * x - s_mid * torch.expm1(0.5 * h) * eps
            eps_mid = eps_fn(x_mid, t_mid.float().expand(B))
            x = (al[i + 1] / al[i]) * x - sg[i + 1] * torch.expm1(h) * eps_mid
        else:
            x = (al[i + 1] / al[i]) * x - sg[i + 1] * torch.expm1(h) * eps
    return _clip(x, clip)


DPM_SOLVERS = {"dpm++2s": dpm_pp_2s, "dpm++2m": dpm_pp_2m, "dpm2": dpm_2}


def dpm_solver_sample(eps_fn, x: torch.Tensor, sde: VPSDE, steps: int = 15, order: int = 2,
                      method: str = "dpm++2s", t_start: float = 1.0, t_end: float = 1e-3,
                      skip: str = "time", clip: float | None = None) -> torch.Tensor:
    """Integrate the probability-flow ODE of `sde` from x at t_start down to t_end with DPM-Solver.

    eps_fn(x, t) -> eps, t a (B,) tensor. `steps` is the number of model evaluations (NFE).
    method "dpm++2s" (the released EDA sampler: DPM-Solver's `singlestep` method with
    predict_x0=True): single-step DPM-Solver++(2S) on data predictions x0 = (x - sigma eps)/alpha,
    over a grid of steps + 1 times; a second-order interval spans two grid cells and evaluates its
    intermediate point at the middle grid time (orders: `singlestep_orders`).
    method "dpm++2m": DPM-Solver++(2M), multistep, data prediction; first step first order.
    method "dpm2": single-step DPM-Solver-2 (noise prediction, midpoint r = 1/2 in log-SNR): steps // 2
    second-order intervals plus one first-order interval when steps is odd.
    order 1 gives DDIM (every method). skip: "time" (uniform in t) or "logSNR" (uniform in lambda).
    clip: x0 predictions and the returned sample are clipped to [-clip, clip] (None: no clipping,
    as released).
    """
    if method not in DPM_SOLVERS:
        raise ValueError(f"unknown DPM-Solver method '{method}': choose dpm++2s, dpm++2m or dpm2")
    return DPM_SOLVERS[method](eps_fn, x, sde, steps, order, t_start, t_end, skip, clip)


# --------------------------------------------------------------------------- bottleneck energy net
class ResBlock(nn.Module):
    """Pre-LayerNorm residual MLP block: x + W2 act(W1 LN(dropout(x)))."""

    def __init__(self, dim: int, expansion: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, expansion * dim), nn.Linear(expansion * dim, dim)
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(self.drop(x)))))


class FourierEmbedding(nn.Module):
    """Gaussian random Fourier features of t: [sin(2 pi W t), cos(2 pi W t)], W ~ scale N(0, I)
    drawn at construction and fixed (a buffer: saved in checkpoints, copied into EDA's policy)."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = 2 * math.pi * t.float().unsqueeze(-1) * self.W
        return torch.cat([x.sin(), x.cos()], -1)


class BottleneckEnergyNet(nn.Module):
    """f(a_t, t, s) = sum(MLPResNet(concat(Lin128(a_t), Lin32(emb t), Lin96(s)))) -> (B,).

    Time embedding "fourier" (released EDA): Fourier features (32, scale `fourier_scale`) of t ->
    Linear 32 -> SiLU, then the Lin32. "sinusoidal": sinusoidal features (64) of 1000 t, then the Lin32.
    """

    compile_unit = True  # diffrl.nets.compile_networks compiles it whole, action gradient included
    T_SCALE = 1000.0  # sinusoidal form: t in [1e-3, 1] is embedded like a discrete step index in [1, 1000]
    FOURIER_DIM = 32

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, blocks: int = 3, dropout: float = 0.1,
                 expansion: int = 4, out_dim: int = 0, t_dim: int = 64, time_embedding: str = "fourier",
                 fourier_scale: float = 30.0):
        super().__init__()
        self.time_embedding = time_embedding
        self.a_in = nn.Linear(act_dim, 128)
        if time_embedding == "fourier":
            d = self.FOURIER_DIM
            self.t_emb = nn.Sequential(FourierEmbedding(d, fourier_scale), nn.Linear(d, d), nn.SiLU())
            self.t_in = nn.Linear(d, 32)
        elif time_embedding == "sinusoidal":
            self.t_emb = SinusoidalEmbedding(t_dim)
            self.t_in = nn.Linear(t_dim, 32)
        else:
            raise ValueError(f"unknown time embedding '{time_embedding}': choose fourier or sinusoidal")
        self.s_in = nn.Linear(obs_dim, 96)
        self.inp = nn.Linear(128 + 32 + 96, hidden)
        self.blocks = nn.Sequential(*(ResBlock(hidden, expansion, dropout) for _ in range(blocks)))
        self.act = nn.SiLU()
        self.out = nn.Linear(hidden, out_dim or act_dim)

    def forward(self, a_t, t, obs, grad: bool = False):
        """f(a_t, t, s) (B,); with `grad`, its gradient in a_t instead (B, act), differentiable in the
        weights where grad mode is on (training differentiates it: a double backward). Both are one
        call of the module, so `compile` (diffrl.nets.compile_networks) fuses the gradient too."""
        if grad:
            return torch.func.grad(lambda a: self.energy(a, t, obs).sum())(a_t)
        return self.energy(a_t, t, obs)

    def energy(self, a_t, t, obs):
        t_scaled = t * self.T_SCALE if self.time_embedding == "sinusoidal" else t
        h = torch.cat([self.a_in(a_t), self.t_in(self.t_emb(t_scaled)), self.s_in(obs)], -1)
        return self.out(self.act(self.blocks(self.inp(h)))).sum(-1)


def energy_eps(net: BottleneckEnergyNet, a_t: torch.Tensor, t: torch.Tensor, obs: torch.Tensor,
               sigma: torch.Tensor) -> torch.Tensor:
    """eps_theta = -sigma_t grad_a f(a_t, t, s): differentiable in the weights under grad mode
    (training), a plain tensor under no_grad (sampling)."""
    return -sigma[:, None] * net(a_t, t, obs, grad=True)


@dataclass
class EDABehaviorConfig:
    """EDA behaviour model: bottleneck (scalar-energy) diffusion on the continuous VP-SDE."""
    beta0: float = param(0.1, "VP-SDE beta_min", low=0, low_open=True)
    beta1: float = param(20.0, "VP-SDE beta_max", low=0, low_open=True)
    t_min: float = param(1e-3, "smallest diffusion time (training and sampler end)", low=0, high=1,
                         low_open=True, high_open=True)
    hidden: int = param(256, "width of the residual MLP", low=1)
    blocks: int = param(3, "residual blocks", low=1)
    expansion: int = param(4, "inner width of a residual block = expansion * hidden", low=1)
    dropout: float = param(0.1, "dropout in the residual blocks (training only)", low=0, high=1, high_open=True)
    out_dim: int = param(0, "width of the vector summed into f (0 = action dim)", low=0)
    time_embedding: str = param("fourier", "time embedding: fourier (released: random Fourier features of t -> "
                                "Linear 32 -> SiLU -> Linear 32) or sinusoidal (sinusoidal 64 of 1000 t -> "
                                "Linear 32)", choices=("fourier", "sinusoidal"))
    fourier_scale: float = param(30.0, "std of the fixed Fourier frequencies W (released 30)", low=0, low_open=True)
    lr: float = param(3e-4, "Adam learning rate", low=0, low_open=True)
    batch_size: int = param(2048, "minibatch size", low=1)
    sample_steps: int = param(15, "DPM-Solver model evaluations per sample", low=1)
    solver_order: int = param(2, "DPM-Solver order (1 = DDIM)", low=1, high=2)
    solver: str = param("dpm++2s", "dpm++2s: single-step DPM-Solver++(2S) (the released sampler); dpm++2m: "
                        "DPM-Solver++(2M) multistep; dpm2: single-step DPM-Solver-2 (noise prediction)",
                        choices=("dpm++2s", "dpm++2m", "dpm2"))
    skip_type: str = param("time", "sampler time grid: uniform in time (released) or in logSNR",
                           choices=("time", "logSNR"))
    clip_x0: bool = param(False, "clip the sampler's x0 predictions and its samples to [-1, 1] (the released "
                          "sampler clips nothing)")


class BottleneckBehavior(nn.Module):
    """Behaviour model mu with eps_theta = -sigma_t grad_a f_theta; loss ||eps_theta - z||^2."""
    name = "eda_behavior"

    def __init__(self, obs_dim: int, act_dim: int, cfg: EDABehaviorConfig, device="cpu"):
        super().__init__()
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.sde = VPSDE(cfg.beta0, cfg.beta1)
        self.net = BottleneckEnergyNet(obs_dim, act_dim, cfg.hidden, cfg.blocks, cfg.dropout, cfg.expansion, cfg.out_dim,
                             time_embedding=cfg.time_embedding, fourier_scale=cfg.fourier_scale)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.to(device)
        self.opt = adam(self.net.parameters(), cfg.lr)

    @property
    def device(self):
        return self.step.device

    def energy(self, a_t, t, obs):
        return self.net(a_t, t, obs)

    def eps(self, a_t, t, obs):
        return energy_eps(self.net, a_t, t, obs, self.sde.alpha_sigma(t)[1])

    def loss(self, action, obs, generator=None, reduce: bool = True):
        B = action.shape[0]
        t = self.cfg.t_min + (1 - self.cfg.t_min) * torch.rand(B, device=action.device, generator=generator)
        z = torch.randn(action.shape, device=action.device, generator=generator)
        al, sg = self.sde.alpha_sigma(t)
        a_t = al[:, None] * action + sg[:, None] * z
        per = (self.eps(a_t, t, obs) - z).pow(2).mean(-1)
        return per.mean() if reduce else per

    def update(self, b: dict, generator=None) -> dict:
        loss = self.loss(b["action"], b["obs"], generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return {"bc_loss": loss.detach()}

    def sample_with(self, net: BottleneckEnergyNet, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """DPM-Solver samples of the model whose energy net is `net` (dropout off while sampling)."""
        c = self.cfg
        was = net.training
        net.eval()
        try:
            x = torch.randn((obs.shape[0], self.act_dim), device=obs.device, generator=generator)
            eps_fn = lambda x_, t_: energy_eps(net, x_, t_, obs, self.sde.alpha_sigma(t_)[1])  # noqa: E731
            with torch.no_grad():
                return dpm_solver_sample(eps_fn, x, self.sde, c.sample_steps, c.solver_order, c.solver,
                                         1.0, c.t_min, c.skip_type, clip=1.0 if c.clip_x0 else None)
        finally:
            net.train(was)

    def sample(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        return self.sample_with(self.net, obs, generator)

    def act(self, obs: np.ndarray, generator=None) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.sample(o, generator).cpu().numpy()


# --------------------------------------------------------------------------- alignment
@dataclass
class EDAConfig:
    """EDA alignment of a copy pi of the behaviour model to the critic."""
    num_samples: int = param(16, "behaviour samples M per state (DPM-Solver of the frozen mu)", low=2)
    alpha: float = param(3.0, "inverse temperature of the labels p = softmax(alpha Q)", low=0)
    beta: float = param(0.1, "logit scale beta of f_pi - f_mu (README value; per-task values in the "
                        "paper's appendix)", low=0, low_open=True)
    lr: float = param(5e-5, "Adam learning rate of pi", low=0, low_open=True)
    batch_size: int = param(256, "states per minibatch", low=1)
    eval_samples: int = param(4, "policy samples per state at evaluation, the argmax-Q one is taken", low=1)
    q_agg: str = param("min", "aggregate of the twin target Q heads for labels and selection",
                       choices=("min", "mean"))
    released_no_grad_bug: bool = param(False, "reproduce the released update, which computes the policy "
                                       "energy under no_grad (the loss then cannot backpropagate and pi "
                                       "is never updated)")


# Published per-task settings: task (D4RL id without version) -> {section: {field: value}}; only tasks
# whose settings are known are listed.
# thu-ml/Efficient-Diffusion-Alignment README.md:45 (finetune_policy.py ... --beta=0.1, for
# halfcheetah-medium-v2), commit 2f96929. The per-task beta is not in the code: README.md:48 and
# utils.py:80 (--beta default 1.0) defer to the paper's Appendix E, which was not at hand, so the other
# eight tasks are left out (a task absent here takes EDAConfig.beta, 0.1). beta 0.1 is pinned for
# halfcheetah-medium although it is the default: it is the one published value.
PUBLISHED_TASKS = {
    "halfcheetah-medium": {"eda": {"beta": 0.1}},
}
# Not applied: nothing else in the code depends on a locomotion task (only antmaze/kitchen switch the
# critic's expectile, BDiffusion.py:241, and the debug AWR temperature, BDiffusion.py:185-187); alpha 3.0
# (utils.py:89), M 16 (utils.py:92), lr 5e-5 (BDiffusion.py:60), behaviour lr 3e-4 (BDiffusion.py:16) and
# batch 2048 (train_behavior.py:26) are the defaults. Steps (critic 150 x 10k, behaviour 100 x 10k,
# alignment n_policy_epochs 20 x 10k: train_critic.py:16, 25; train_behavior.py:16, 25; utils.py:86,
# finetune_policy.py:30) are the budget's.


class EDAAlign(nn.Module):
    """EDA alignment. `behavior` (BottleneckBehavior, mu: frozen) and `critic` (IQLCritic: frozen) come from
    the previous stages' checkpoints; pi is initialised as an exact copy of mu's energy net, trained
    with dropout off. Both models and the critic are submodules (in this agent's state_dict)."""
    name = "eda"
    extra_args = ("support_states",)  # constructor arguments beyond the config (diffrl.offline.build_agent)

    def __init__(self, obs_dim: int, act_dim: int, cfg: EDAConfig, behavior: BottleneckBehavior, critic: IQLCritic,
                 device="cpu", support_states: int = 0):
        super().__init__()
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.behavior, self.critic = behavior, critic
        self.support_states = int(support_states)
        # support set (prepare): states (S, obs), their behaviour samples (S, M, act) and labels (S, M);
        # derived from the frozen mu and critic, so not part of the checkpoint
        self.support_obs = self.support_actions = self.support_labels = None
        self.pi = copy.deepcopy(behavior.net)
        self.behavior.requires_grad_(False)
        self.critic.requires_grad_(False)
        self.pi.requires_grad_(True)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.to(device)
        self.train()
        self.pi_opt = adam(self.pi.parameters(), cfg.lr)

    @classmethod
    def from_configs(cls, obs_dim: int, act_dim: int, cfg: EDAConfig, behavior_cfg: EDABehaviorConfig,
                     critic_cfg: IQLConfig, device="cpu", reward_scale: float = 1.0) -> "EDAAlign":
        """A fresh agent with untrained behaviour and critic shells (for loading a whole EDA checkpoint)."""
        return cls(obs_dim, act_dim, cfg, BottleneckBehavior(obs_dim, act_dim, behavior_cfg, device),
                   IQLCritic(obs_dim, act_dim, critic_cfg, device, reward_scale), device)

    def train(self, mode: bool = True):
        """Dropout stays off in mu and pi whatever the mode (alignment uses no dropout)."""
        super().train(mode)
        self.behavior.eval()
        self.pi.eval()
        return self

    def q_value(self, obs, action):
        q = self.critic.q_target(obs, action)
        return q.min(0).values if self.cfg.q_agg == "min" else q.mean(0)

    def policy_energy(self, a_t, t, obs):
        return self.pi(a_t, t, obs)

    @torch.no_grad()
    def prepare(self, buffer, generator=None, chunk_states: int = 256) -> None:
        """Draw the support set: for each of `support_states` dataset states (0 = all), M samples
        of the frozen behaviour model (its DPM-Solver) and their labels softmax(alpha Q)."""
        M, n = self.cfg.num_samples, buffer.size
        obs = buffer.data["obs"][:n]
        if 0 < self.support_states < n:
            idx = torch.randperm(n, generator=generator, device=generator.device if generator else "cpu")
            obs = obs[idx[: self.support_states].to(obs.device)]
        actions, labels = [], []
        for o in obs.split(chunk_states):
            rep = o.repeat_interleave(M, 0)
            a = self.behavior.sample(rep, generator)
            labels.append(torch.softmax(self.cfg.alpha * self.q_value(rep, a).view(len(o), M), -1))
            actions.append(a.view(len(o), M, -1))
        self.support_obs, self.support_actions, self.support_labels = obs, torch.cat(actions), torch.cat(labels)

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, labels: torch.Tensor,
             generator=None) -> tuple[torch.Tensor, dict]:
        """Alignment loss of B states `obs` with their M behaviour samples `actions` (B, M, d) and
        labels p (B, M)."""
        cfg, beh = self.cfg, self.behavior
        B, M = actions.shape[:2]
        rep = obs.repeat_interleave(M, 0)
        a = actions.reshape(B * M, -1)
        with torch.no_grad():
            t = (beh.cfg.t_min + (1 - beh.cfg.t_min) * torch.rand(B, device=obs.device, generator=generator))
            t = t.repeat_interleave(M, 0)  # one shared t per state
            al, sg = beh.sde.alpha_sigma(t)
            a_t = al[:, None] * a + sg[:, None] * torch.randn(a.shape, device=obs.device, generator=generator)
            f_mu = beh.energy(a_t, t, rep)
        if cfg.released_no_grad_bug:
            with torch.no_grad():
                f_pi = self.policy_energy(a_t, t, rep)
        else:
            f_pi = self.policy_energy(a_t, t, rep)
        logits = cfg.beta * (f_pi - f_mu).view(B, M)
        loss = -(labels * torch.log_softmax(logits, -1)).sum(-1).mean()
        with torch.no_grad():
            entropy = -(labels * labels.clamp_min(1e-12).log()).sum(-1).mean()
        return loss, {"label_entropy": entropy, "logit_std": logits.detach().std(-1).mean()}

    def update(self, b: dict, generator=None) -> dict:
        """One alignment step on `b["obs"].shape[0]` states drawn from the support set (the
        shared loop's minibatch only sets the batch size: states come with their support actions)."""
        if self.support_obs is None:
            raise RuntimeError("EDA alignment needs its support set: call prepare(buffer) before the first update")
        rows = torch.randint(0, len(self.support_obs), (b["obs"].shape[0],), generator=generator,
                             device=self.support_obs.device)
        loss, info = self.loss(self.support_obs[rows], self.support_actions[rows], self.support_labels[rows],
                               generator)
        if loss.requires_grad:
            self.pi_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.pi_opt.step()
        self.step += 1
        return {"align_loss": loss.detach(), **info}

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """Samples of the aligned policy pi (DPM-Solver on pi's energy net)."""
        return self.behavior.sample_with(self.pi, obs, generator)

    @property
    def eval_sampler(self) -> str:
        """What the evaluated policy samples with: not a DDPM chain (diffrl/algos/tilted.py has nothing to guide)."""
        c = self.behavior.cfg
        return f"EDA's DPM-Solver ({c.solver}, {c.sample_steps} steps)"

    @torch.no_grad()
    def select(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """Per state: `eval_samples` policy samples, the one with the largest Q."""
        return self.choose(obs, self.sample, generator)

    @torch.no_grad()
    def choose(self, obs: torch.Tensor, draw, generator=None) -> torch.Tensor:
        """The evaluation choice over candidates `draw(obs_repeated, generator)`: eval_samples per
        state, the one with the largest q_value. select's only path, so a tilted row that draws
        otherwise chooses exactly as this row does."""
        K, B = self.cfg.eval_samples, obs.shape[0]
        rep = obs.repeat_interleave(K, 0)
        a = draw(rep, generator)
        idx = self.q_value(rep, a).view(B, K).argmax(-1)
        return a.view(B, K, -1)[torch.arange(B, device=obs.device), idx]

    def act(self, obs: np.ndarray, generator=None) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.step.device)
        squeeze = o.dim() == 1
        a = self.select(o[None] if squeeze else o, generator)
        return (a[0] if squeeze else a).cpu().numpy()
