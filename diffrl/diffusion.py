"""Discrete diffusion schedules, the eps-prediction loss, the DDPM ancestral sampler and the
DPM-Solver++(2M) multistep update.

One sampler family serves every discrete-time algorithm (diffusion BC, Diffusion-QL and
variants, SDAC/DPMD): `DiffusionSchedule.sample` with an optional per-step hook for tilts.
`dpm_solver_2m` is the one DPM-Solver++(2M) (Lu et al. 2022) for both time kinds: Diffusion-QL's
discrete VP schedule (diffrl.algos.dql.DPMSolver) and EDA's continuous VP-SDE
(diffrl.algos.eda.dpm_solver_sample, method dpm++2m).
"""
from __future__ import annotations

import math

import torch


def vp_betas(T: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """Diffusion-QL's discrete VP schedule: alpha_t = exp(-b_min/T - 0.5 (b_max-b_min)(2t-1)/T^2)."""
    t = torch.arange(1, T + 1, dtype=torch.float64)
    alphas = torch.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 * t - 1) / T ** 2)
    return 1 - alphas


def linear_betas(T: int, scale: float = 0.8) -> torch.Tensor:
    """SDAC/DPMD's linear schedule: beta = scale * linspace(1e-4, 0.999, T)."""
    return scale * torch.linspace(1e-4, 0.999, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008) -> torch.Tensor:
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


SCHEDULES = {"vp": vp_betas, "linear": linear_betas, "cosine": cosine_betas}


class DiffusionSchedule:
    """Precomputed DDPM coefficients for a beta schedule (index t = 0..T-1, t = T-1 noisiest)."""

    def __init__(self, betas: torch.Tensor, device="cpu"):
        betas = betas.double()
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        f = lambda x: x.float().to(device)  # noqa: E731
        self.T = len(betas)
        self.betas, self.alphas, self.abar = f(betas), f(alphas), f(abar)
        self.sqrt_abar, self.sqrt_1m_abar = f(abar.sqrt()), f((1 - abar).sqrt())
        self.post_c0 = f(betas * abar_prev.sqrt() / (1 - abar))
        self.post_ct = f((1 - abar_prev) * alphas.sqrt() / (1 - abar))
        self.post_std = f(post_var.clamp(min=1e-20).sqrt())
        self.post_std[0] = 0.0  # the last denoising step adds no noise

    @classmethod
    def make(cls, kind: str, T: int, device="cpu", **kw) -> "DiffusionSchedule":
        return cls(SCHEDULES[kind](T, **kw), device)

    def q_sample(self, x0, t, noise):
        """a_t = sqrt(abar_t) a_0 + sqrt(1-abar_t) z."""
        return self.sqrt_abar[t, None] * x0 + self.sqrt_1m_abar[t, None] * noise

    def predict_x0(self, x_t, t, eps):
        return (x_t - self.sqrt_1m_abar[t, None] * eps) / self.sqrt_abar[t, None]

    def loss(self, eps_fn, x0, obs, generator=None, reduce=True):
        """Denoising loss ||eps(a_t, t, s) - z||^2 at a uniformly drawn t; per-sample if not reduce."""
        B = x0.shape[0]
        t = torch.randint(0, self.T, (B,), device=x0.device, generator=generator)
        z = torch.randn(x0.shape, device=x0.device, generator=generator)
        per = (eps_fn(self.q_sample(x0, t, z), t, obs) - z).pow(2).mean(-1)
        return per.mean() if reduce else per

    def step(self, x_t, t: int, eps, generator=None, clip: float | None = 1.0):
        """One ancestral step x_t -> x_{t-1} through the clipped x0 prediction."""
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0 = self.predict_x0(x_t, tt, eps)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        mean = self.post_c0[t] * x0 + self.post_ct[t] * x_t
        if t == 0:
            return mean
        return mean + self.post_std[t] * torch.randn(x_t.shape, device=x_t.device, generator=generator)

    def sample(self, eps_fn, obs, act_dim: int, generator=None, init_scale: float = 1.0,
               clip: float | None = 1.0, guide=None):
        """DDPM ancestral sampling from x_T ~ init_scale * N(0, I), x0 clipped at every step.

        `guide(x_t, t, eps) -> eps` may tilt each step (training-free guidance). Gradients flow
        through the chain unless the caller wraps the call in torch.no_grad().
        """
        B = obs.shape[0]
        x = init_scale * torch.randn((B, act_dim), device=obs.device, generator=generator)
        for t in reversed(range(self.T)):
            tt = torch.full((B,), t, device=obs.device, dtype=torch.long)
            eps = eps_fn(x, tt, obs)
            if guide is not None:
                eps = guide(x, tt, eps)
            x = self.step(x, t, eps, generator, clip)
        return x.clamp(-1, 1) if clip is not None else x


def dpm_solver_2m(x: torch.Tensor, x0_fn, alpha, sigma, lam, first_order: bool = False,
                  to_clean: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) from grid point 0 (the noisiest) to the last, on data predictions.

    x0_fn(x, i) is the (clipped, if the caller clips) data prediction at grid point i; alpha, sigma
    and lam = log(alpha / sigma) hold the grid's values, as python floats (no host sync) or 0-d
    tensors. With h_i = lam_{i+1} - lam_i and r_i = h_{i-1} / h_i:
        x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (exp(-h_i) - 1) D_i,
        D_0 = x0_0, D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}   (first_order: D_i = x0_i, DDIM).
    to_clean: the grid's last point is the clean data (sigma = 0), so the last step returns the data
    prediction (a first-order step; lam is infinite there).
    """
    expm1 = math.expm1 if isinstance(lam[0], float) else torch.expm1
    x0_prev, n = None, len(lam) - 1
    for i in range(n):
        x0 = x0_fn(x, i)
        if to_clean and i == n - 1:
            return x0
        h = lam[i + 1] - lam[i]
        if first_order or x0_prev is None:
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * expm1(-h) * d
        x0_prev = x0
    return x
