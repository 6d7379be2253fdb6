"""Inference-time tilts of a diffusion policy toward high values of a critic: training-free guidance
of the DDPM sampler, MALA on an energy-parameterised policy, and best-of-particles selection. The
math is in docs/algorithms.md ("Inference-time tilts"). One implementation serves the online agents
(diffrl.algos.dpmd.DiffusionOnline, whose value may also come from learned world models) and the
tilted evaluation rows of the offline policies (diffrl.algos.tilted, through `TiltedPolicy`).

`TiltedSampler` is that implementation. It reads, from the object it is part of:
- `tilt_cfg`: the TiltConfig (the settings below);
- `schedule`: the DiffusionSchedule of the policy's DDPM sampler (level t = 0 the cleanest), and
  `init_scale`: its untilted sampler draws x_T ~ init_scale N(0, I);
- `sample_dim`: the dimension of one sample;
- `sampling_net`: the eps-prediction net eps(x_t, t, s) sampled when no other is passed; MALA
  needs an energy-parameterised one (an `EnergyEps`: eps = grad_x E(x_t, t, s));
- `tilt_value(obs, x, generator=None, agg=None)`: the value V(s, x) that tilts and selects,
  e.g. a critic's Q heads aggregated by `agg` (default tilt_cfg.q_agg).
`TiltedPolicy` is the component for any policy: it takes the net and its schedule, a critic and a
TiltConfig and provides exactly these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from diffrl.fields import ConfigError, param
from diffrl.nets import SinusoidalEmbedding

INF = float("inf")


@dataclass
class TiltConfig:
    """How a diffusion policy is tilted toward high critic values while it samples (docs/algorithms.md,
    "Inference-time tilts")."""
    tfg_lambda: float = param(0.0, "guidance strength lambda (0 = off); with mala_steps > 0 the MALA tilt", low=0)
    guidance_schedule: str = param("constant", "lambda_t: constant; linear = the reference's lambda at the clean "
                                   "end (t = 0, 1) decaying to lambda / (T-1) at the noisiest level; linear_noisy = "
                                   "lambda (t+1) / T (strongest at the noisiest level)",
                                   choices=("constant", "linear", "linear_noisy"))
    guidance_recurrence: int = param(1, "guided steps per level (re-noise to level t in between); 1 = none",
                                     low=1)
    per_sample_guidance: bool = param(True, "plain guidance: per-sample gradient; False = the published gradient "
                                      "of the batch mean (guidance scaled by 1/N). The MALA tilt is always per sample")
    mala_steps: int = param(0, "MALA corrector steps per level (0 = off); needs an energy-parameterised policy "
                            "(eps = grad_a E)", low=0)
    mala_init_scale: float = param(1.0, "with mala_steps > 0, x_T ~ mala_init_scale N(0, I) (the reference starts "
                                   "MALA chains from N(0, I); without MALA x_T follows the policy's own sampler)",
                                   low=0, low_open=True)
    mala_sigma_energy: bool = param(False, "MALA target -E / sqrt(1-abar_t) + lambda_t V (grad log target = the "
                                    "policy score); False = the reference's -E + lambda_t V")
    mala_adaptation: str = param("per_chain", "step-size adaptation: per_chain = the reference (one log step per "
                                 "particle chain, moved by its realised accept fraction over the states); pooled = "
                                 "one log step for the sampler call, moved by the mean acceptance probability",
                                 choices=("per_chain", "pooled"))
    mala_target_accept: float = param(0.574, "MALA step-size adaptation target acceptance", low=0, high=1,
                                      low_open=True, high_open=True)
    mala_adapt: float = param(0.05, "MALA log step-size adaptation rate", low=0)
    num_particles: int = param(1, "policy samples per state, drawn in one sampler call; the one with the best "
                               "value is kept", low=1)
    particle_selection_lambda: float = param(INF, "inf: keep the argmax particle; else draw one "
                                             "~ softmax(lambda value)", low=0)
    q_agg: str = param("min", "aggregation of the critic's Q heads in the value that tilts and selects",
                       choices=("min", "mean", "max"))


def tilt_field(name: str):
    """TiltConfig's field `name` (default and documentation) for a config that holds the tilt settings
    among its own fields (the online rows' OnlineConfig)."""
    f = TiltConfig.__dataclass_fields__[name]
    return field(default=f.default, metadata=f.metadata)


def aggregate(q: torch.Tensor, agg: str) -> torch.Tensor:
    """Q heads (n, B) -> (B,): their min, mean or max."""
    return q.min(0).values if agg == "min" else q.mean(0) if agg == "mean" else q.max(0).values


def check_mala(cfg: TiltConfig, net, key: str) -> None:
    """MALA needs the energy of the policy (its Metropolis ratio compares log densities): one line
    saying so when `net` predicts eps without an energy; `key` names the setting (bc_tilt.mala_steps)."""
    if cfg.mala_steps > 0 and not callable(getattr(net, "energy", None)):
        raise ConfigError(f"{key}={cfg.mala_steps} is unavailable: MALA needs an energy-parameterised policy "
                          f"(eps = grad_a E, as EDA's aligned energy policy) for its Metropolis acceptance ratio, "
                          f"and this policy's {type(net).__name__} predicts eps with no energy: set {key}: 0")


class EnergyEps(nn.Module):
    """An eps-prediction net defined by a scalar energy: a subclass defines `energy(a_t, t, s)` -> (B,),
    and calling the net returns eps_theta = grad_a E, so it is a drop-in eps-prediction net. When the
    caller has gradients enabled the gradient is taken with create_graph (to train through it or to
    differentiate it again); under no_grad it is computed locally and returned detached."""

    def forward(self, a_t, t, obs):
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            a = a_t if (graph and a_t.requires_grad) else a_t.detach().requires_grad_(True)
            eps, = torch.autograd.grad(self.energy(a, t, obs).sum(), a, create_graph=graph)
        return eps


class EnergyGradNet(EnergyEps):
    """Scalar energy E_theta(a_t, t, s) with NoiseNet's time embedding and body, one output: the
    online agents' policy when they tilt with MALA."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, t_dim: int = 16):
        super().__init__()
        self.time = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, 2 * t_dim), nn.Mish(),
                                  nn.Linear(2 * t_dim, t_dim))
        dims = [act_dim + t_dim + obs_dim] + [hidden] * layers
        body = [m for a, b in zip(dims[:-1], dims[1:]) for m in (nn.Linear(a, b), nn.Mish())]
        self.net = nn.Sequential(*body, nn.Linear(hidden, 1))  # torch's Mish: twice differentiable

    def energy(self, a_t, t, obs):
        return self.net(torch.cat([a_t, self.time(t), obs], -1)).squeeze(-1)


def select_particles(particles: torch.Tensor, values: torch.Tensor, lam: float, generator=None) -> torch.Tensor:
    """particles (B, P, D), values (B, P) -> (B, D): argmax (lam = inf) or one ~ softmax(lam values)."""
    if math.isinf(lam):
        idx = values.argmax(1)
    else:
        idx = torch.multinomial(torch.softmax(lam * values, 1), 1, generator=generator).squeeze(1)
    return particles[torch.arange(particles.shape[0], device=particles.device), idx]


class TiltedSampler:
    """Sampling under the tilt of `self.tilt_cfg` (what it reads from its object: the module docstring).
    Per-call state: `last_mala_accept`, the acceptance statistic that adapted each MALA step of the
    last sampler call (mean over chains), and the plain-guidance scale of the call."""

    def _lambda_t(self, t: int) -> float:
        """Guidance strength at level t (0 = clean end, T-1 = noisiest)."""
        cfg, T = self.tilt_cfg, self.schedule.T
        if cfg.guidance_schedule == "linear":  # the reference: lambda levels[max(t-1, 0)], levels 1 .. 1/(T-1)
            return cfg.tfg_lambda * (1.0 - max(t - 1, 0) / max(T - 1, 1))
        if cfg.guidance_schedule == "linear_noisy":
            return cfg.tfg_lambda * (t + 1) / T
        return cfg.tfg_lambda

    def _guided_eps(self, net, x, tt, t: int, obs, lam: float, generator, agg):
        """eps_theta - lambda_t sqrt(1-abar_t) grad_{a_t} V(s, x0_hat(a_t)), through eps_theta; V is
        evaluated at x0_hat clipped to [-1, 1] like the sampler's x0 (clipped coordinates pass no gradient)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = net(x, tt, obs)
            v = self.tilt_value(obs, self.schedule.predict_x0(x, tt, eps).clamp(-1, 1), generator, agg)
            g, = torch.autograd.grad(v.sum() * self._guide_scale, x)
        return eps.detach() - lam * self.schedule.sqrt_1m_abar[t] * g

    def _log_target(self, net, x, tt, t: int, obs, lam: float, generator, agg):
        """MALA target log pi_t(x) = -E(s, x, t) + lam V(s, x0_hat(x)) per sample (the energy term
        divided by sqrt(1-abar_t) with mala_sigma_energy); returns (logp, grad logp, eps = grad E)."""
        scale = 1.0 / float(self.schedule.sqrt_1m_abar[t]) if self.tilt_cfg.mala_sigma_energy else 1.0
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            e = net.energy(x, tt, obs)
            eps, = torch.autograd.grad(e.sum(), x, create_graph=lam > 0)
            logp = -scale * e
            if lam > 0:  # each sample's own gradient: no mean over the states
                v = self.tilt_value(obs, self.schedule.predict_x0(x, tt, eps).clamp(-1, 1), generator, agg)
                logp = logp + lam * v
                g, = torch.autograd.grad(logp.sum(), x)
            else:
                g = -scale * eps
        return logp.detach(), g.detach(), eps.detach()

    def _mala_level(self, net, x, tt, t: int, obs, lam: float, generator, agg, chains: int):
        """mala_steps Metropolis-adjusted Langevin steps at level t. Rows are laid out state-major
        (row b * chains + p is particle chain p of state b): with mala_adaptation per_chain each
        chain p has its own log step size, moved by the fraction of its proposals accepted."""
        cfg, sch = self.tilt_cfg, self.schedule
        logp, g, eps = self._log_target(net, x, tt, t, obs, lam, generator, agg)
        per_chain = cfg.mala_adaptation == "per_chain"
        log_step = torch.zeros(chains if per_chain else 1, device=x.device)  # reset per level
        for _ in range(cfg.mala_steps):
            h = (log_step.exp() * sch.betas[t]).clamp(1e-8, 0.5)
            h = (h.repeat(x.shape[0] // chains) if per_chain else h).unsqueeze(-1)  # (N, 1)
            z = torch.randn(x.shape, device=x.device, generator=generator)
            y = x + h * g + (2 * h).sqrt() * z
            logp_y, g_y, eps_y = self._log_target(net, y, tt, t, obs, lam, generator, agg)
            fwd = -(y - x - h * g).pow(2).sum(-1) / (4 * h.squeeze(-1))
            bwd = -(x - y - h * g_y).pow(2).sum(-1) / (4 * h.squeeze(-1))
            acc = (logp_y - logp + bwd - fwd).clamp(max=0).exp().nan_to_num(0.0)
            u = torch.rand(acc.shape, device=x.device, generator=generator)
            keep = u < acc
            x, g, eps = (torch.where(keep.unsqueeze(-1), new, old) for new, old in ((y, x), (g_y, g), (eps_y, eps)))
            logp = torch.where(keep, logp_y, logp)
            if per_chain:
                rate = keep.float().view(-1, chains).mean(0)  # realised accept fraction of each chain
            else:
                rate = acc.mean().view(1)
            self.last_mala_accept.append(rate.mean())
            log_step = log_step + cfg.mala_adapt * (rate - cfg.mala_target_accept)
        return x, eps

    def denoise(self, obs: torch.Tensor, generator=None, net=None, guided: bool = True,
                n_states: int | None = None, agg: str | None = None) -> torch.Tensor:
        """One policy sample per row of obs, (N, sample_dim) in [-1, 1], with the configured tilt
        (none if not `guided`; an energy net then samples exp(-E) with MALA). No gradients to the
        parameters (sampling only). `n_states`: distinct states among the rows, laid out
        state-major (rows = states x particle chains); per_sample_guidance=False scales the plain
        guidance by 1 / n_states, as the published gradient of the mean over the state batch
        (particles were vmapped) did. `agg` overrides the Q aggregation of the tilt."""
        cfg, sch = self.tilt_cfg, self.schedule
        net = self.sampling_net if net is None else net
        check_mala(cfg, net, "mala_steps")
        lam_on = guided and cfg.tfg_lambda > 0
        N = obs.shape[0]
        n_states = n_states or N
        self._guide_scale = 1.0 if cfg.per_sample_guidance else 1.0 / n_states
        with torch.no_grad():
            if not lam_on and cfg.mala_steps == 0:
                return sch.sample(net, obs, self.sample_dim, generator, self.init_scale, clip=1.0)
            self.last_mala_accept = []
            init = cfg.mala_init_scale if cfg.mala_steps > 0 else self.init_scale
            x = init * torch.randn((N, self.sample_dim), device=obs.device, generator=generator)
            for t in reversed(range(sch.T)):
                tt = torch.full((N,), t, device=obs.device, dtype=torch.long)
                lam = self._lambda_t(t) if lam_on else 0.0
                if cfg.mala_steps > 0:  # guidance only through MALA; then an unguided predictor step
                    x, eps = self._mala_level(net, x, tt, t, obs, lam, generator, agg, N // n_states)
                    x = sch.step(x, t, eps, generator)
                    continue
                for k in range(cfg.guidance_recurrence):
                    x_prev = sch.step(x, t, self._guided_eps(net, x, tt, t, obs, lam, generator, agg), generator)
                    if k < cfg.guidance_recurrence - 1:  # re-noise to level t: q(x_t | x_{t-1})
                        z = torch.randn(x.shape, device=x.device, generator=generator)
                        x = sch.alphas[t].sqrt() * x_prev + sch.betas[t].sqrt() * z
                x = x_prev
            return x.clamp(-1, 1)

    def select(self, obs: torch.Tensor, particles: int, generator=None, net=None, agg: str | None = None):
        """Best-of-particles: (B, sample_dim) chosen samples and their tilt values (B,). All B * particles
        samples come from ONE sampler call on the repeated states. `agg` overrides the Q aggregation
        of the tilt and of the choice."""
        B = obs.shape[0]
        o = obs.repeat_interleave(particles, 0) if particles > 1 else obs
        x = self.denoise(o, generator, net, n_states=B, agg=agg)
        with torch.no_grad():
            v = self.tilt_value(o, x, generator, agg)
        if particles == 1:
            return x, v
        v = v.view(B, particles)
        lam = self.tilt_cfg.particle_selection_lambda
        best = select_particles(x.view(B, particles, -1), v, lam, generator)
        vbest = v.max(1).values if math.isinf(lam) else None
        return best, vbest


class TiltedPolicy(TiltedSampler, nn.Module):
    """A diffusion policy acting under a tilt: `num_particles` samples per state from its tilted
    sampler, one kept by `particle_selection_lambda`.

    net: the policy's eps-prediction net eps(x_t, t, s) on `schedule`'s levels (an EnergyEps for
    MALA); critic: a module or function of (s, a) returning Q heads (n, B), aggregated by cfg.q_agg,
    or one Q (B,); act_dim: the action dimension; init_scale: the untilted sampler's x_T scale;
    what: the params section of its settings, named in errors."""

    def __init__(self, net: nn.Module, schedule, critic, cfg: TiltConfig, act_dim: int, init_scale: float = 1.0,
                 what: str = "tilt"):
        super().__init__()
        check_mala(cfg, net, f"{what}.mala_steps")
        self.net, self.critic, self.tilt_cfg, self.schedule = net, critic, cfg, schedule
        self.sample_dim, self.init_scale = act_dim, init_scale
        self.last_mala_accept: list[torch.Tensor] = []
        self._guide_scale = 1.0

    @property
    def sampling_net(self) -> nn.Module:
        return self.net

    def tilt_value(self, obs, x, generator=None, agg: str | None = None) -> torch.Tensor:
        q = self.critic(obs, x)
        return aggregate(q, agg or self.tilt_cfg.q_agg) if q.dim() == 2 else q

    def sample(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """(B, act_dim) actions in [-1, 1] for a batch of states."""
        return self.select(obs, self.tilt_cfg.num_particles, generator)[0]

    def act(self, obs: np.ndarray, generator=None) -> np.ndarray:
        o = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.schedule.betas.device)
        return self.sample(o, generator).cpu().numpy()
