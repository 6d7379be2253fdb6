"""The inference-time tilts of the online agents (diffrl.algos.dpmd.DiffusionOnline): the tilt
value V(s, a) (min/mean Q, the one-step model value, or an H-step plan's model return), training-
free guidance of the DDPM sampler, MALA on an energy policy, and best-of-particles selection. The
math is in docs/algorithms.md ("SDAC and DPMD (online)") and the module docstring of dpmd.py; the
world models behind the model-based values live in diffrl.algos.dpmd_models.

TiltedSampler is a mixin of the agent: it reads the agent's cfg (OnlineConfig), actor_ema, critic,
schedule, and, for the model-based tilts, model and value.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from diffrl.nets import SinusoidalEmbedding

INF = float("inf")


class EnergyGradNet(nn.Module):
    """Scalar energy E_theta(a_t, t, s) (NoiseNet's time embedding and body, one output); calling
    it returns eps_theta = grad_a E, so it is a drop-in eps-prediction net. When the caller has
    gradients enabled the gradient is taken with create_graph (to train through it or to
    differentiate it again); under no_grad it is computed locally and returned detached."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, t_dim: int = 16):
        super().__init__()
        self.time = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, 2 * t_dim), nn.Mish(),
                                  nn.Linear(2 * t_dim, t_dim))
        dims = [act_dim + t_dim + obs_dim] + [hidden] * layers
        body = [m for a, b in zip(dims[:-1], dims[1:]) for m in (nn.Linear(a, b), nn.Mish())]
        self.net = nn.Sequential(*body, nn.Linear(hidden, 1))  # torch's Mish: twice differentiable

    def energy(self, a_t, t, obs):
        return self.net(torch.cat([a_t, self.time(t), obs], -1)).squeeze(-1)

    def forward(self, a_t, t, obs):
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            a = a_t if (graph and a_t.requires_grad) else a_t.detach().requires_grad_(True)
            eps, = torch.autograd.grad(self.energy(a, t, obs).sum(), a, create_graph=graph)
        return eps


def select_particles(particles: torch.Tensor, values: torch.Tensor, lam: float, generator=None) -> torch.Tensor:
    """particles (B, P, D), values (B, P) -> (B, D): argmax (lam = inf) or one ~ softmax(lam values)."""
    if math.isinf(lam):
        idx = values.argmax(1)
    else:
        idx = torch.multinomial(torch.softmax(lam * values, 1), 1, generator=generator).squeeze(1)
    return particles[torch.arange(particles.shape[0], device=particles.device), idx]


class TiltedSampler:
    """Sampling with the configured tilt, and the reference's untilted evaluation action."""

    def q_agg(self, obs, act, critic=None, agg: str | None = None) -> torch.Tensor:
        """Q aggregated over the twin heads: `agg` (min, mean, max), by default cfg.q_critic_agg."""
        q = (critic or self.critic)(obs, act)
        agg = agg or self.cfg.q_critic_agg
        return q.min(0).values if agg == "min" else q.mean(0) if agg == "mean" else q.max(0).values

    def tilt_value(self, obs, seq, generator=None, agg: str | None = None) -> torch.Tensor:
        """The value V(s, a) every tilt, weight and particle choice uses (see the module docstring);
        `agg` overrides the aggregation of the Q heads (the update's a' uses min)."""
        cfg = self.cfg
        if not self.use_models:
            return self.q_agg(obs, seq, agg=agg)
        if cfg.plan_horizon == 0:  # one-step model value
            s2, r, p_term = self.model.predict(obs, seq, generator)
            return cfg.reward_scale * r + cfg.gamma * (1 - p_term) * self.value(s2)
        d, s, ret, disc = self.act_dim, obs, 0.0, 1.0
        for k in range(self.H):
            a = seq[:, k * d:(k + 1) * d]
            if k == self.H - 1 and cfg.tilt == "q":
                return ret + disc * self.q_agg(s, a, agg=agg)
            s, r, p_term = self.model.predict(s, a, generator)
            ret = ret + disc * cfg.reward_scale * r
            disc = disc * cfg.gamma * (1 - p_term)
        return ret + disc * self.value(s)

    # ----------------------------------------------------------------- sampling
    def _lambda_t(self, t: int) -> float:
        """Guidance strength at level t (0 = clean end, T-1 = noisiest)."""
        cfg = self.cfg
        if cfg.guidance_schedule == "linear":  # the reference: lambda levels[max(t-1, 0)], levels 1 .. 1/(T-1)
            return cfg.tfg_lambda * (1.0 - max(t - 1, 0) / max(cfg.T - 1, 1))
        if cfg.guidance_schedule == "linear_noisy":
            return cfg.tfg_lambda * (t + 1) / cfg.T
        return cfg.tfg_lambda

    def _guided_eps(self, net, x, tt, t: int, obs, lam: float, generator, agg):
        """eps_theta - lambda_t sqrt(1-abar_t) grad_{a_t} V(s, x0_hat(a_t)), through eps_theta."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = net(x, tt, obs)
            v = self.tilt_value(obs, self.schedule.predict_x0(x, tt, eps).clamp(-1, 1), generator, agg)
            g, = torch.autograd.grad(v.sum() * self._guide_scale, x)
        return eps.detach() - lam * self.schedule.sqrt_1m_abar[t] * g

    def _log_target(self, net, x, tt, t: int, obs, lam: float, generator, agg):
        """MALA target log pi_t(x) = -E(s, x, t) + lam V(s, x0_hat(x)) per sample (the energy term
        divided by sqrt(1-abar_t) with mala_sigma_energy); returns (logp, grad logp, eps = grad E)."""
        scale = 1.0 / float(self.schedule.sqrt_1m_abar[t]) if self.cfg.mala_sigma_energy else 1.0
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
        cfg, sch = self.cfg, self.schedule
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
        """One policy sample per row of obs, (N, seq_dim) in [-1, 1], with the configured tilt
        (none if not `guided`; an energy net then samples exp(-E) with MALA). No gradients to the
        parameters (sampling only). `n_states`: distinct states among the rows, laid out
        state-major (rows = states x particle chains); per_sample_guidance=False scales the plain
        guidance by 1 / n_states, as the published gradient of the mean over the state batch
        (particles were vmapped) did. `agg` overrides the Q aggregation of the tilt."""
        cfg, sch = self.cfg, self.schedule
        net = net or self.actor_ema
        lam_on = guided and cfg.tfg_lambda > 0
        N = obs.shape[0]
        n_states = n_states or N
        self._guide_scale = 1.0 if cfg.per_sample_guidance else 1.0 / n_states
        with torch.no_grad():
            if not lam_on and cfg.mala_steps == 0:
                return sch.sample(net, obs, self.seq_dim, generator, cfg.init_scale, clip=1.0)
            self.last_mala_accept = []
            init = cfg.mala_init_scale if cfg.mala_steps > 0 else cfg.init_scale
            x = init * torch.randn((N, self.seq_dim), device=obs.device, generator=generator)
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
        """Best-of-particles: (B, seq_dim) chosen samples and their tilt values (B,). All B * particles
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
        lam = self.cfg.particle_selection_lambda
        best = select_particles(x.view(B, particles, -1), v, lam, generator)
        vbest = v.max(1).values if math.isinf(lam) else None
        return best, vbest

    @torch.no_grad()
    def eval_actions(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """The reference's evaluation action in [-1, 1]^d: num_particles samples of the EMA policy
        WITHOUT tilt (an energy net samples exp(-E) with MALA), the one with the largest
        min(Q1, Q2) (of its first action, for plans), no noise."""
        B, P = obs.shape[0], self.cfg.num_particles
        o = obs.repeat_interleave(P, 0) if P > 1 else obs
        x = self.denoise(o, generator, self.actor_ema, guided=False, n_states=B)[:, :self.act_dim]
        if P == 1:
            return x
        q = self.critic(o, x).min(0).values.view(B, P)
        return select_particles(x.view(B, P, -1), q, INF)
