"""Discrete diffusion schedules, the eps-prediction loss and the DDPM ancestral sampler.

One sampler family serves every discrete-time algorithm (diffusion BC, Diffusion-QL and
variants, SDAC/DPMD): `DiffusionSchedule.sample` with an optional per-step hook for tilts.
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
