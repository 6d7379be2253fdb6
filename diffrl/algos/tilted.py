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

Two keys make the tilt the only difference from the base row (`TiltRowConfig.sampler`, `selection`;
the defaults, `tilt`, keep the rows above). `sampler: base` draws from the base row's own evaluated
policy and sampler (the agent's `sample`; `eval_sampler` names it where it is not PARTS's chain)
instead of PARTS's chain: the same DDPM chain for bc and a ddpm Diffusion-QL row (guidance and
particles as above), Diffusion-QL's DPM-Solver with `sampler: dpm`, EDA's DPM-Solver on pi, DTQL's
one-step policy; where that is not a DDPM chain there is nothing to guide, so only the particles tilt
(num_particles draws, one kept by particle_selection_lambda on the tilt's critic) and tfg_lambda > 0
or MALA stop the evaluation with one line. `selection: base` ends in the base row's own evaluation
choice: each of its candidates is one tilted draw (num_particles particles, one kept), and its rule,
the agent's `choose` (the one its own act runs), picks among them (Diffusion-QL: eval_candidates ~
softmax(min Q_target / eval_temperature), one sample for its critic-free bc variant or one candidate;
DTQL: eval_candidates ~ softmax(min Q_target / eval_temperature) in its eval_chunk chunks; EDA: argmax
of its q_value over eval_samples; bc: one sample); `selection: tilt` keeps one tilted draw per state.
So with tfg_lambda 0, no MALA, one particle and both keys `base`, a tilted row acts exactly as its
base row does, generator draw for generator draw (tests/test_tilt_identity.py), and with the tilt on
only the guidance, MALA and particles differ.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from diffrl.algos import REGISTRY
from diffrl.algos.tilts import aggregate, EnergyEps, select_particles, TiltConfig, TiltedPolicy
from diffrl.diffusion import DiffusionSchedule
from diffrl.fields import ConfigError, param


@dataclass
class TiltRowConfig(TiltConfig):
    """A tilted evaluation row: its base row's trained policy sampled with these tilt settings, no
    retraining (diffrl/algos/tilted.py)."""
    levels: int = param(20, "DDPM levels the tilt samples on for a base policy in continuous time (EDA's "
                        "VP-SDE, times uniform in [t_min, 1]; DTQL's EDM behaviour model, its Karras noise levels); "
                        "bc and the Diffusion-QL family keep their own T; unused with sampler: base", low=2)
    sampler: str = param("base", "tilt: the DDPM chain above (Diffusion-QL always DDPM; EDA, DTQL on `levels` "
                         "levels); base: the base row's own evaluated policy and sampler (bc, ddpm Diffusion-QL: "
                         "the same chain; dpm Diffusion-QL: its DPM-Solver; EDA: its DPM-Solver; DTQL: its "
                         "one-step policy), tilted by particles alone where that is not a DDPM chain. base (with selection: base): "
                         "the tilt is the only difference from the base row, whose probability of improvement "
                         "over it then measures the tilt alone",
                         choices=("tilt", "base"))
    selection: str = param("base", "tilt: one tilted draw per state (best of num_particles); base: the base row's "
                           "own evaluation choice among its candidates, each a tilted draw (Diffusion-QL, DTQL: "
                           "eval_candidates ~ softmax(min Q_target / eval_temperature); EDA: argmax Q of "
                           "eval_samples; bc: one)", choices=("tilt", "base"))


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


# --------------------------------------------------------------------------- sampler and selection: base
# What a base agent provides for them, so that its evaluation is written once, in its own module:
# `sample(obs, generator)` (its evaluated sampler), `eval_sampler` (that sampler's name where it is not
# PARTS's DDPM chain, else None) and `choose(obs, draw, generator)` (its act's choice over `draw`).
BASE_API = ("sample", "eval_sampler", "choose")


class TiltedRowPolicy(nn.Module):
    """A tilted row's policy with `sampler: base` or `selection: base`: the base agent's own evaluation
    choice (`base_selection`), or one draw per state, over `draw(obs, generator)`, one tilted action
    per row of obs. The base agent and the critic are submodules (policy_fn finds the device)."""

    def __init__(self, agent: nn.Module, critic, draw, base_selection: bool, tilted: TiltedPolicy | None = None):
        super().__init__()
        self.agent, self.tilted = agent, tilted
        self.critic = critic
        self._draw, self.base_selection = draw, base_selection

    def sample(self, obs: torch.Tensor, generator=None) -> torch.Tensor:
        """(B, act_dim) actions for a batch of states."""
        with torch.no_grad():
            if self.base_selection:
                return self.agent.choose(obs, self._draw, generator)
            return self._draw(obs, generator)

    def act(self, obs: np.ndarray, generator=None) -> np.ndarray:
        o = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=next(self.agent.parameters()).device)
        squeeze = o.dim() == 1
        a = self.sample(o[None] if squeeze else o, generator)
        return (a[0] if squeeze else a).cpu().numpy()


def _particle_draw(draw, critic, cfg: TiltConfig):
    """`draw` tilted by particles alone: num_particles draws per row, one kept by
    particle_selection_lambda on the critic's q_agg (TiltedSampler.select's choice)."""
    P = cfg.num_particles
    if P == 1:
        return draw

    def tilted(obs, generator=None):
        B = obs.shape[0]
        o = obs.repeat_interleave(P, 0)
        x = draw(o, generator)
        q = critic(o, x)
        v = aggregate(q, cfg.q_agg) if q.dim() == 2 else q
        return select_particles(x.view(B, P, -1), v.view(B, P), cfg.particle_selection_lambda, generator)
    return tilted


def _tilted_draw(policy: TiltedPolicy):
    """One action per row of obs from the tilted sampler (best of num_particles)."""
    P = policy.tilt_cfg.num_particles
    if P == 1:
        return lambda obs, generator=None: policy.denoise(obs, generator)
    return lambda obs, generator=None: policy.select(obs, P, generator)[0]


def tilted_policy(row: str, cfg: TiltRowConfig, agent, critic_agent=None) -> TiltedPolicy | TiltedRowPolicy:
    """The policy of tilted row `row`: its base row's trained `agent` sampled under the tilt `cfg` and
    valued by the target critic of `critic_agent` (the critic row's trained agent) or its own; with
    `sampler` or `selection` base, the base row's own sampler or evaluation choice (module docstring)."""
    entry = REGISTRY[row]
    module = REGISTRY[entry.base].module
    if module not in PARTS:
        raise ConfigError(f"{row}: the tilts sample diffusion policies; the base row {entry.base} "
                          f"({module}.py) has no diffusion sampler")
    critic = target_critic(critic_agent if critic_agent is not None else agent)
    if critic is None:
        raise ConfigError(f"{row}: its base row {entry.base} has no critic; name the row whose critic tilts "
                          f"it (the registry's critic_row)")
    missing = [name for name in BASE_API if not hasattr(agent, name)]
    if missing and "base" in (cfg.sampler, cfg.selection):
        raise ConfigError(f"{row}: sampler/selection base is not defined for a {module}.py base row: its agent "
                          f"lacks {', '.join(missing)} (what diffrl.algos.tilted.BASE_API lists)")
    own = agent.eval_sampler if cfg.sampler == "base" else None
    if own is not None:
        for key, value in (("tfg_lambda", cfg.tfg_lambda), ("mala_steps", cfg.mala_steps)):
            if value > 0:
                raise ConfigError(f"{row}.{key}={value:g} is unavailable with {row}.sampler: base: the base row's "
                                  f"own sampler, {own}, has no DDPM chain to guide (only num_particles tilts it); "
                                  f"set {row}.{key}: 0 or {row}.sampler: tilt")
        draw = _particle_draw(agent.sample, critic, cfg)
        return TiltedRowPolicy(agent, critic, draw, cfg.selection == "base").eval()
    net, schedule = PARTS[module](agent, cfg)
    # x_T ~ N(0, I): the base samplers' own start (EDM's sigma_max N(0, I) is N(0, I) at abar_T)
    policy = TiltedPolicy(net, schedule, critic, cfg, agent.act_dim, 1.0, what=row).eval()
    if cfg.selection == "tilt":
        return policy
    return TiltedRowPolicy(agent, critic, _tilted_draw(policy), True, policy).eval()


def load_tilted(row: str, cfg: TiltRowConfig, task: str, seed: int, device) -> tuple[nn.Module, dict]:
    """(the policy of tilted row `row` built from the runs of `task` and `seed`, the base run's
    train.json with the critic run's wall time added to its pretraining wall time)."""
    from diffrl.algos import evaluated_runs
    from diffrl.offline import load_agent
    from diffrl.pipeline import run_dir

    runs = [run_dir(task, r, seed) for r in evaluated_runs(row)]
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
