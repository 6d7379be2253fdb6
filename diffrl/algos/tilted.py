"""Tilted evaluation rows: the trained policy of an offline row (its run of the same env and seed)
evaluated under an inference-time tilt, without retraining. A row is a registry entry of kind
`tilted` (diffrl.algos.REGISTRY: its base row, and the row whose critic tilts it when the base has
none) and a params.yaml section of TiltRowConfig; the evaluate stage builds its policy with
`load_tilted`. The tilts are diffrl.algos.tilts (`TiltedPolicy`, the implementation the online
agents use); the math is in docs/algorithms.md, "Inference-time tilts".

The tilted sampler takes DDPM ancestral steps, x0 clipped to [-1, 1], on a discrete schedule. What
each base policy gives it (`PARTS`):
- bc and the Diffusion-QL family: the evaluated noise net (the online one, or the EMA copy with
  `eval_ema`) on its own VP schedule (T = 5), x_T ~ N(0, I); with tfg_lambda 0, no MALA and one
  particle this is exactly the row's own DDPM sampler (a Diffusion-QL row with `sampler: dpm` is
  sampled with DDPM steps here). Diffusion-QL is tilted with its own target critic; BC has none
  and is tilted with the target critic of the `iql` row of the same seed (the IQL critic: 3x256
  Mish, expectile 0.7, the locomotion reward scaling), which the registry names.
- eda: the aligned energy policy f on `levels` levels of its VP-SDE, times t_k uniform in
  [t_min, 1] (k = 0 the cleanest), abar_k = alpha(t_k)^2, energy E(x, k, s) = -sigma_k f(x, t_k, s),
  so grad_x E = -sigma_k grad_x f is EDA's noise prediction and -E / sigma_k = f its log-density up
  to a constant (the target of MALA with mala_sigma_energy); tilted with its own IQL target
  critic. MALA is available for this row only. EDA's own sampler is DPM-Solver (15 steps, nothing
  clipped), so at tfg_lambda 0 this row is the same policy under another sampler.
- dtql: DTQL's behaviour model, the EDM denoiser D(x; sigma, s) that DTQL keeps training as its
  trust region, on `levels` of its Karras noise levels sigma_k, abar_k = 1 / (1 + sigma_k^2), with
  eps(x, k, s) = (x - sqrt(abar_k) D(x / sqrt(abar_k); sigma_k, s)) / sqrt(1 - abar_k); tilted with
  DTQL's own IQL target critic. DTQL's evaluated policy is a one-step tanh-Gaussian, which has no
  denoising chain to guide (its own evaluation already selects among 1024 samples), so this row
  asks whether tilting its trust-region model at inference matches the distilled policy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from diffrl.algos import REGISTRY
from diffrl.algos.tilts import EnergyEps, TiltConfig, TiltedPolicy
from diffrl.diffusion import DiffusionSchedule
from diffrl.fields import ConfigError, param


@dataclass
class TiltRowConfig(TiltConfig):
    """A tilted evaluation row: its base row's trained policy sampled with these tilt settings, no
    retraining (diffrl/algos/tilted.py)."""
    levels: int = param(20, "DDPM levels the tilt samples on for a base policy in continuous time (EDA's "
                        "VP-SDE, times uniform in [t_min, 1]; DTQL's EDM behaviour model, its Karras noise levels); "
                        "bc and the Diffusion-QL family keep their own T", low=2)


def schedule_of(abar: torch.Tensor, device) -> DiffusionSchedule:
    """The discrete schedule on `device` whose cumulative products are `abar` (level 0 the cleanest)."""
    abar = abar.detach().double().cpu()  # DiffusionSchedule derives its coefficients on the CPU
    return DiffusionSchedule(1 - abar / torch.cat([abar.new_ones(1), abar[:-1]]), device)


class VPSDELevels(EnergyEps):
    """EDA's energy policy f(a_t, t, s) on discrete levels of its VP-SDE (the module docstring)."""

    def __init__(self, f: nn.Module, sde, t_min: float, levels: int):
        super().__init__()
        self.f = f
        t = torch.linspace(t_min, 1.0, levels, dtype=torch.float64)
        alpha, sigma = sde.alpha_sigma(t)
        device = next(f.parameters()).device
        self.schedule = schedule_of(alpha.pow(2), device)
        self.register_buffer("times", t.float().to(device))
        self.register_buffer("sigmas", sigma.float().to(device))

    def energy(self, a_t, t, obs):
        return -self.sigmas[t] * self.f(a_t, self.times[t], obs)


class EDMLevels(nn.Module):
    """DTQL's EDM behaviour denoiser as an eps-prediction net on discrete levels (the module docstring)."""

    def __init__(self, behavior: nn.Module, levels: int):
        super().__init__()
        self.behavior = behavior
        sigma = behavior.sigma_schedule(levels)[:-1].flip(0).double()  # Karras levels, cleanest first
        device = sigma.device
        self.schedule = schedule_of(1 / (1 + sigma.pow(2)), device)
        self.register_buffer("sigmas", sigma.float())

    def forward(self, x, t, obs):
        sch = self.schedule
        a, s = sch.sqrt_abar[t, None], sch.sqrt_1m_abar[t, None]
        return (x - a * self.behavior.denoise(x / a, self.sigmas[t], obs)) / s


def _bc(agent, cfg: TiltRowConfig):
    """bc (released bc_diffusion.py): its evaluated noise net (eps, or eps_ema with eval_ema) on its own schedule."""
    return agent.eps_ema if agent.cfg.eval_ema else agent.eps, agent.schedule


def _dql(agent, cfg: TiltRowConfig):
    """The Diffusion-QL family (released code): the evaluated actor (actor_ema with eval_ema), its own schedule."""
    return agent.actor_ema if agent.cfg.eval_ema else agent.actor, agent.schedule


def _eda(agent, cfg: TiltRowConfig):
    """EDA (Chen et al. 2024): the aligned energy policy on `levels` levels of its VP-SDE."""
    net = VPSDELevels(agent.pi, agent.behavior.sde, agent.behavior.cfg.t_min, cfg.levels)
    return net, net.schedule


def _dtql(agent, cfg: TiltRowConfig):
    """DTQL (Chen, Wang & Zhou 2024): its EDM behaviour denoiser on `levels` of its Karras noise levels."""
    net = EDMLevels(agent.behavior, cfg.levels)
    return net, net.schedule


# the base row's module -> (its trained agent, the row's config) -> (eps-prediction net, its schedule)
PARTS = {"bc": _bc, "dql": _dql, "eda": _eda, "dtql": _dtql}


def target_critic(agent) -> nn.Module | None:
    """The twin-head target critic of a trained agent: IQL's q_target, Diffusion-QL's critic_target,
    that of the IQL critic EDA and DTQL hold; None for diffusion BC, which has no critic."""
    for name in ("critic_target", "q_target"):
        if isinstance(getattr(agent, name, None), nn.Module):
            return getattr(agent, name)
    inner = getattr(agent, "critic", None)
    return target_critic(inner) if isinstance(inner, nn.Module) else None


def tilted_policy(row: str, cfg: TiltRowConfig, agent, critic_agent=None) -> TiltedPolicy:
    """The policy of tilted row `row`: its base row's trained `agent` sampled under the tilt `cfg` and
    valued by the target critic of `critic_agent` (the critic row's trained agent) or its own."""
    entry = REGISTRY[row]
    module = REGISTRY[entry.base].module
    if module not in PARTS:
        raise ConfigError(f"{row}: the tilts sample diffusion policies; the base row {entry.base} "
                          f"({module}.py) has no diffusion sampler")
    critic = target_critic(critic_agent if critic_agent is not None else agent)
    if critic is None:
        raise ConfigError(f"{row}: its base row {entry.base} has no critic; name the row whose critic tilts "
                          f"it (the registry's critic_row)")
    net, schedule = PARTS[module](agent, cfg)
    # x_T ~ N(0, I): the base samplers' own start (EDM's sigma_max N(0, I) is N(0, I) at abar_T)
    return TiltedPolicy(net, schedule, critic, cfg, agent.act_dim, 1.0, what=row).eval()


def load_tilted(row: str, cfg: TiltRowConfig, env: str, seed: int, device) -> tuple[TiltedPolicy, dict]:
    """(the policy of tilted row `row` built from the runs of `env` and `seed`, the base run's
    train.json with the critic run's wall time added to its pretraining wall time)."""
    from diffrl.algos import evaluated_runs
    from diffrl.offline import load_agent
    from diffrl.pipeline import run_dir

    runs = [run_dir(env, r, seed) for r in evaluated_runs(row)]
    for run in runs:
        if not Path(run).exists():
            raise FileNotFoundError(f"{run} is missing: {row} evaluates it without training; run "
                                    f"`snakemake {run}` (or the whole target) first")
    agent, _ = load_agent(runs[0], device)
    critic_agent = load_agent(runs[1], device)[0] if len(runs) > 1 else None
    info = json.loads((Path(runs[0]) / "train.json").read_text())
    for run in runs[1:]:
        info["pretraining_wall_s"] = (info.get("pretraining_wall_s", 0.0)
                                      + json.loads((Path(run) / "train.json").read_text()).get("wall_s", 0.0))
    return tilted_policy(row, cfg, agent, critic_agent), info
