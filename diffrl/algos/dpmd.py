"""Online diffusion-policy RL: SDAC (reverse-sampling score matching) and DPMD (diffusion policy mirror
descent) with the fork's inference-time tilts. Math and reference hyperparameters:
docs/algorithms.md, section "SDAC and DPMD (online)"; the reference implementation is
pnielsen2/inference_mirror_descent at 833e14c. Here: the config, the agent (acting, and the steps an
update is made of) and one update function per algorithm (UPDATES, at the end). Guidance, MALA and
particle selection are the shared tilt implementation (`diffrl.algos.tilts.TiltedSampler`), which
the agent supplies with its policy net, schedule and tilt value (Q, or the model values of the
model-based tilts and plans, defined here); the world models of the model-based tilts live in
`diffrl.algos.dpmd_models`, the named variants in params.yaml, and the training loop, which also
runs the fork's SAC baseline (diffrl.algos.sac.SACOnlineConfig), in `diffrl.train.train_online`. Where
our code offers an alternative to the reference, the reference is the default and the alternative a
documented OnlineConfig field (named below).

Shared by both algorithms
- Policy: eps_theta(a_t, t, s) (`diffrl.nets.NoiseNet`), linear beta schedule (T=20), x_T ~ 0.5 N(0, I),
  t embedded as the reference's DACERPolicyNet does (`time_embedding`: `diffrl.nets.ScaledSinusoidalEmbedding`,
  then Linear 32 -> Mish -> Linear 16; an offline_init row keeps its offline net's embedding),
  DDPM ancestral sampling with x0 clipped to [-1, 1] (`DiffusionSchedule.sample`; guided sampling
  composes `DiffusionSchedule.step`). An EMA copy of the policy collects data and is evaluated.
- Action: num_particles samples per state in ONE sampler call (states repeated), the particle with
  the best tilt value is kept (argmax, or drawn ~ softmax(lambda value) with a finite
  particle_selection_lambda); while training, Gaussian noise of std 0.1 alpha is added, and the
  noised action is stored, sent to the environment and used as BC target unclipped
  (`clip_noisy_actions` clips it).
- Evaluation (`eval_actions`, every online row, in training and in the evaluate stage): the EMA
  policy sampled WITHOUT tilt (an energy net: MALA of exp(-E)), the particle with the largest
  min(Q1, Q2) of num_particles, no noise (`eval_tilt` evaluates with the acting routine instead).
- Critic: twin Q (3x256 Mish), target reward_scale r + gamma (1 - terminal) min Q_target(s', a'),
  a' the policy's action at s' drawn with the particle routine (current policy, not the EMA, tilted
  and selected with min Q whatever q_critic_agg says: `td_select_agg`; plus the exploration noise:
  `target_noise`). Policy, EMA and target critics every delay_update updates; the policy lr decays
  linearly from policy_lr to policy_lr_end between policy-optimiser steps lr_decay_begin and
  lr_decay_end (25k-75k = updates 50k-150k with delay_update 2; `lr_decay_unit` counts updates).
- Temperature: H(alpha) = 0.5 d log(2 pi e (0.1 alpha)^2) (the entropy of the exploration noise),
  loss log(alpha) (H - target) with target -0.9 d, Adam 7e-3 every 250 updates (`tune_entropy`).

Losses
- sdac: on a fresh acting-routine sample a0 at the batch's s (one more sampler call per policy
  step), weighted by the critic before the update's critic step (`sdac_loss_states=next` uses the
  TD sample a' at s' instead): a_t = q_sample(a0, t, e1); 64 candidates
  a0_j = clip((a_t - sqrt(1-abar) e2_j) / sqrt(abar)); w = softmax_j(V(s, a0_j) 5 / alpha);
  L = mean_B sum_j w_j ||eps_theta(a_t, t, s) - e2_j||^2 / d.
- dpmd: on the update's s' and a': L = mean_B w ||eps_theta(q_sample(a', t, z), t, s') - z||^2 / d with
  w = exp(clip((V - m) / s, -3, 3) / alpha), V the value of a' after one critic step, m and s the
  running mean/std of V: m = 0, s = 1 at the start and moved at rate 1e-3 every update
  (`q_norm_init_from_batch` starts them at the first batch's). The BC target a' is the
  tilted/selected sample itself (iterated mirror descent). `fix_q_norm_bug=False` reproduces the
  published precedence bug V - m / s; `dpmd_constant_weight` sets w = 1; `dpmd_double_q_update`
  reproduces the published second application of each critic step (after V is taken).
V is the tilt value: Q aggregated over the heads by `q_critic_agg` (the TD target always uses the
min), or with tilt="model" the one-step model value reward_scale r_hat(s, a) + gamma (1 - p_term) V_psi(s')
with a learned state value V_psi (regressed on the TD bootstrap value min Q_target(s', a') of every
update: cheap, differentiable, no sampler call; we chose it over Q(s', pi(s'))), or with
plan_horizon H > 0 the model return of an H-action sequence
sum_{k<H-1} gamma^k rs r_hat_k + gamma^{H-1} Q_agg(s_{H-1}, a_{H-1}) (tilt="q"; Q of the last step
stands in for r_{H-1} + gamma V(s_H)) or sum_{k<H} gamma^k rs r_hat_k + gamma^H V_psi(s_H) (tilt="model").

Inference-time tilts (acting and the update's a'; evaluation only with eval_tilt)
- Training-free guidance (tfg_lambda > 0): eps_g = eps_theta - lambda_t sqrt(1-abar_t) grad_{a_t} V(s, x0_hat(a_t)),
  the gradient taken through eps_theta; V is evaluated at x0_hat clipped to [-1, 1] like the
  sampler's x0 (clipped coordinates pass no gradient). lambda_t = tfg_lambda (constant) or, with
  the linear schedule, the reference's tfg_lambda (1 - max(t-1, 0)/(T-1)): lambda at the clean end
  down to lambda/(T-1) at the noisiest level (`linear_noisy`: tfg_lambda (t+1)/T, strongest at the
  noisiest). guidance_recurrence K = guided steps per level: after each of the first K-1 the
  sample is re-noised to level t with q(x_t | x_{t-1}). per_sample_guidance=False reproduces the
  published 1/B scaling of this path (gradient of the mean over the B states of a sampler call;
  the published code vmapped the particles, so B excludes them).
- MALA (mala_steps > 0): the policy is an energy net E_theta(s, a, t) with eps_theta = grad_a E.
  The chain starts from N(0, I) (`mala_init_scale`). At each level, mala_steps
  Metropolis-adjusted Langevin steps target log pi_t(x) = -E(s, x, t) + lambda_t V(s, x0_hat(x)),
  each sample with its own gradient (no 1/B here; `mala_sigma_energy` divides the energy term by
  sqrt(1-abar_t), which makes its gradient the policy's score), step size
  h = clip(exp(l) beta_t, 1e-8, 0.5), l reset to 0 per level; each particle chain has its own l,
  moved by 0.05 (its realised accept fraction over the states - 0.574) after each step
  (`mala_adaptation=pooled`: one l moved by the mean acceptance probability); then one unguided
  predictor (DDPM) step with eps = grad E. With mala_steps > 0 the guidance enters only through
  MALA (tfg_lambda sets its lambda); without guidance (evaluation) MALA samples exp(-E).

Published reference commands (fork README) and our named variants: the online sections of
params.yaml (one per row, each listing what makes it that variant; docs/params.md). Our default
is the FIXED q normalisation (fix_q_norm_bug=True) and single critic steps; the `dpmd` variant
reproduces the reference command `--alg dpmd --num_particles 32` exactly, i.e. with both
published bugs on (fix_q_norm_bug=False, dpmd_double_q_update=True), which is the code behind 9748;
`dpmd_fixnorm` is that command with --fix_q_norm_bug (8995). Likewise `dpmd_tilt` and `dpmd_select`
keep the published bugs of their reference commands. The `sac` row (section sac_online) is the
fork's SAC (11114) in the same loop.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from diffrl.algos.dpmd_models import make_dynamics
from diffrl.algos.tilts import (INF, EnergyGradNet, TiltConfig, TiltedSampler, aggregate, select_particles,
                               tilt_field)
from diffrl.diffusion import DiffusionSchedule
from diffrl.fields import ConfigError, param
from diffrl.nets import adam, Critic, NoiseNet, ScaledSinusoidalEmbedding, soft_update, ValueNet


@dataclass
class OnlineConfig:
    """SDAC / DPMD online hyperparameters (docs/algorithms.md, "SDAC and DPMD (online)"); defaults are
    the published HalfCheetah settings, except that published bugs are off (the variants that reproduce a
    published number turn them on in params.yaml)."""
    alg: str = param("dpmd", "sdac: reverse-sampling score matching; dpmd: diffusion policy mirror descent",
                     choices=("sdac", "dpmd"))
    # networks and diffusion
    hidden: int = param(256, "hidden width of the policy net and the twin critics", low=1)
    layers: int = param(3, "hidden layers of the policy net and the twin critics", low=1)
    schedule: str = param("linear", "beta schedule: linear (0.8 linspace(1e-4, 0.999, T)), cosine, or vp "
                          "(Diffusion-QL's, for policies fine-tuned from it)", choices=("linear", "cosine", "vp"))
    T: int = param(20, "diffusion steps", low=1)
    time_embedding: str = param("reference", "embedding of the level t in the policy net (then Linear 32 -> Mish -> "
                                "Linear 16 in both): reference = the reference's scaled sinusoid (frequencies "
                                "10000^(-j/8), j = 0..7, [sin, cos] / 4); shared = Diffusion-QL's "
                                "(10000^(-j/7), unscaled), the noise net the offline rows share, which an offline_init "
                                "row continues (it must say shared)",
                                choices=("reference", "shared"))
    init_scale: float = param(0.5, "x_T ~ init_scale N(0, I)", low=0, low_open=True)
    # environment loop
    num_envs: int = param(5, "environments stepped side by side; one update per iteration of num_envs env steps",
                          low=1)
    batch_size: int = param(256, "minibatch size", low=1)
    buffer_size: int = param(1_000_000, "replay buffer capacity (transitions)", low=1)
    warmup: int = param(30_000, "uniform-random env steps before the first update", low=0)
    # critic
    gamma: float = param(0.99, "discount", low=0, high=1)
    tau: float = param(0.005, "Polyak rate of the target critics (every delay_update updates)", low=0, high=1,
                       low_open=True)
    lr: float = param(3e-4, "Adam learning rate of the critics", low=0, low_open=True)
    reward_scale: float = param(0.2, "reward multiplier in the TD target (and in model-based tilts)",
                                low=0, low_open=True)
    delay_update: int = param(2, "updates between policy, EMA and target-critic updates", low=1)
    dpmd_double_q_update: bool = param(False, "dpmd: apply each critic step twice (published bug; the `dpmd` "
                                       "variant turns it on to reproduce the reference run)")
    # policy
    policy_lr: float = param(3e-4, "policy Adam lr before the decay", low=0, low_open=True)
    policy_lr_end: float = param(3e-5, "policy Adam lr after the decay", low=0, low_open=True)
    lr_decay_begin: int = param(25_000, "policy-optimiser step (or update, see lr_decay_unit) at which the linear "
                                "policy-lr decay begins", low=0)
    lr_decay_end: int = param(75_000, "policy-optimiser step (or update) at which the policy lr reaches "
                              "policy_lr_end", low=0)
    lr_decay_unit: str = param("policy_steps", "what lr_decay_begin/end count: policy_steps (the reference's optax "
                               "schedule: with delay_update 2, steps 25k-75k are updates 50k-150k) or updates",
                               choices=("policy_steps", "updates"))
    ema_rate: float = param(0.005, "Polyak rate of the EMA policy (collection and evaluation), per policy update",
                            low=0, high=1, low_open=True)
    # action selection
    num_particles: int = param(32, "policy samples per state when acting; the best under the tilt value is kept",
                               low=1)
    td_particles: int = param(0, "particles for the update's a' (TD target and policy-loss samples); "
                              "0 = num_particles (the published code uses its acting routine)", low=0)
    particle_selection_lambda: float = tilt_field("particle_selection_lambda")
    q_critic_agg: str = param("min", "aggregation of the twin Q heads in the DPMD weights and in the tilt and "
                              "selection of environment actions (TD target always min)", choices=("min", "mean", "max"))
    td_select_agg: str = param("min", "aggregation that tilts and selects the update's a' (TD and BC targets): "
                               "min (the reference's hard min) or q_critic_agg (the acting aggregation)",
                               choices=("min", "q_critic_agg"))
    noise_scale: float = param(0.1, "exploration noise std = noise_scale * alpha (training actions and a')",
                               low=0)
    target_noise: bool = param(True, "add the exploration noise to the update's a' as the published acting "
                               "routine does")
    clip_noisy_actions: bool = param(False, "clip the exploration-noised action to [-1, 1] before it is stored, "
                                     "sent to the environment and used as the BC target; False = the reference: "
                                     "unclipped (MuJoCo clips the control, its control cost sees the raw action)")
    eval_tilt: bool = param(False, "evaluate with the acting routine (tilt, q_critic_agg, particle_selection_lambda); "
                            "False = the reference protocol: EMA policy sampled WITHOUT tilt (energy nets: "
                            "unguided MALA of exp(-E)), argmax of min(Q1, Q2) over num_particles, no noise")
    # temperature
    init_alpha: float = param(5.0, "initial temperature alpha (log alpha starts at ln 5)", low=0, low_open=True)
    tune_entropy: bool = param(True, "adapt alpha so the noise entropy 0.5 d log(2 pi e (noise_scale alpha)^2) "
                               "tracks target_entropy_scale d")
    target_entropy_scale: float = param(-0.9, "target entropy per action dimension")
    alpha_lr: float = param(7e-3, "Adam lr of log alpha", low=0, low_open=True)
    alpha_every: int = param(250, "updates between temperature steps", low=1)
    # sdac
    sdac_candidates: int = param(64, "sdac: reverse-sampling candidates a0_j per sample", low=1)
    sdac_beta: float = param(5.0, "sdac: candidate weights softmax(V beta / alpha)", low=0)
    sdac_loss_states: str = param("s", "sdac: s = the reference (the loss on a fresh acting-routine sample at the "
                                  "batch's s, weighted by the critic before the update's critic step); next = on "
                                  "the TD sample a' at s' (no second sampler call), weighted after it",
                                  choices=("s", "next"))
    # dpmd
    q_norm_rate: float = param(1e-3, "dpmd: rate of the running mean/std of V (updated every update)", low=0,
                               high=1, low_open=True)
    q_norm_init_from_batch: bool = param(False, "dpmd: start the running mean/std at the first batch's V; False = "
                                         "the reference's m = 0, s = 1")
    q_norm_clip: float = param(3.0, "dpmd: clip of the normalised V before exp(. / alpha)", low=0, low_open=True)
    fix_q_norm_bug: bool = param(True, "dpmd: True = (V - m) / s; False = the published precedence bug V - m / s")
    dpmd_constant_weight: bool = param(False, "dpmd: w = 1 (pure cloning of the tilted/selected samples)")
    # inference-time tilt: the fields named like TiltConfig's are its fields (diffrl.algos.tilts), read
    # through `tilt_config`
    tilt: str = param("q", "value that tilts the policy: q = Q_agg(s, a); model = reward_scale r_hat(s, a) + "
                      "gamma V_psi(s_hat') from learned models", choices=("q", "model"))
    tfg_lambda: float = tilt_field("tfg_lambda")
    guidance_schedule: str = tilt_field("guidance_schedule")
    guidance_recurrence: int = tilt_field("guidance_recurrence")
    per_sample_guidance: bool = tilt_field("per_sample_guidance")
    mala_steps: int = param(0, "MALA corrector steps per level (0 = off); > 0 makes the policy an energy net",
                            low=0)
    mala_init_scale: float = tilt_field("mala_init_scale")
    mala_sigma_energy: bool = tilt_field("mala_sigma_energy")
    mala_adaptation: str = tilt_field("mala_adaptation")
    mala_target_accept: float = tilt_field("mala_target_accept")
    mala_adapt: float = tilt_field("mala_adapt")
    # world models (tilt = model or plan_horizon > 0)
    model_type: str = param("mlp_ensemble", "dynamics/reward model: deterministic MLP ensemble or a conditional "
                            "diffusion model of (s' - s, r)", choices=("mlp_ensemble", "diffusion"))
    model_ensemble: int = param(5, "members of the MLP ensemble", low=1)
    model_hidden: int = param(200, "hidden width of the world model", low=1)
    model_layers: int = param(3, "hidden layers of the world model", low=1)
    model_T: int = param(10, "diffusion steps of the diffusion dynamics model", low=1)
    model_lr: float = param(1e-3, "Adam lr of the world model and the state value V_psi", low=0, low_open=True)
    plan_horizon: int = param(0, "H > 0: denoise H actions jointly, tilt by the model return, execute the first",
                              low=0)
    # offline-to-online
    offline_init: str = param("", "offline row whose policy and critic the run starts from (its run of the same "
                              "seed; the networks and diffusion schedule must match it): '' = none, or dql, qg, "
                              "edp, eg_ood", choices=("", "dql", "qg", "edp", "eg_ood"))

    def tilt_config(self) -> TiltConfig:
        """The tilt settings of the acting routine (q_critic_agg aggregates the Q heads)."""
        shared = {f: getattr(self, f) for f in TiltConfig.__dataclass_fields__ if f != "q_agg"}
        return TiltConfig(**shared, q_agg=self.q_critic_agg)

    def check(self, prefix: str = "dpmd") -> None:
        if self.offline_init and self.time_embedding != "shared":
            raise ConfigError(f"{prefix}.offline_init={self.offline_init!r} continues an offline run's noise net, "
                              f"which embeds t the shared way: set {prefix}.time_embedding: shared")
        if self.lr_decay_end < self.lr_decay_begin:
            raise ConfigError(f"{prefix}.lr_decay_end={self.lr_decay_end} is before {prefix}.lr_decay_begin="
                              f"{self.lr_decay_begin}: make end >= begin")


# --------------------------------------------------------------------------- agent
class DiffusionOnline(TiltedSampler, nn.Module):
    """SDAC or DPMD agent (cfg.alg). Actions live in [-1, 1]^d; `act` maps them onto the env's box."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: OnlineConfig, device="cpu", action_low=None,
                 action_high=None):
        super().__init__()
        if cfg.alg not in UPDATES:
            raise ConfigError(f"DiffusionOnline runs sdac or dpmd, not {cfg.alg!r}")
        cfg.check()
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.H = max(1, cfg.plan_horizon)
        self.seq_dim = act_dim * self.H  # the diffused vector: one action or an H-action plan
        if cfg.mala_steps > 0:
            self.actor = EnergyGradNet(obs_dim, self.seq_dim, cfg.hidden, cfg.layers)
        else:
            self.actor = NoiseNet(obs_dim, self.seq_dim, cfg.hidden, cfg.layers)
        if cfg.time_embedding == "reference":
            # the reference's embedding (relax/network/blocks.py:190-197, DACERPolicyNet; blocks.py:210-214 for
            # the energy net) in place of the shared one: both are parameter-free, so the weights drawn above
            # are the same for either choice and a seed differs only in how t is embedded
            self.actor.time[0] = ScaledSinusoidalEmbedding(self.actor.time[1].in_features)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = Critic(obs_dim, act_dim, cfg.hidden, cfg.layers, "mish")
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_alpha)))
        self.register_buffer("q_mean", torch.zeros(()))  # dpmd running statistics of the tilt value
        self.register_buffer("q_std", torch.ones(()))
        # q_norm_init_from_batch: 0 until the first batch initialised m, s
        self.register_buffer("q_stats_ready", torch.zeros(()))
        low = torch.as_tensor(-np.ones(act_dim) if action_low is None else action_low, dtype=torch.float32)
        high = torch.as_tensor(np.ones(act_dim) if action_high is None else action_high, dtype=torch.float32)
        self.register_buffer("action_low", low.clone())
        self.register_buffer("action_high", high.clone())
        self.use_models = cfg.tilt == "model" or cfg.plan_horizon > 0
        if self.use_models:
            self.model = make_dynamics(cfg.model_type, obs_dim, act_dim, cfg.model_ensemble, cfg.model_hidden,
                                       cfg.model_layers, cfg.model_T)
            self.value = ValueNet(obs_dim, cfg.hidden, cfg.layers) if cfg.tilt == "model" else None
        self.schedule = DiffusionSchedule.make(cfg.schedule, cfg.T, device)
        self.to(device)
        self.actor_opt = adam(self.actor.parameters(), cfg.policy_lr)
        self.critic_opt = adam(self.critic.parameters(), cfg.lr)
        self.alpha_opt = adam([self.log_alpha], cfg.alpha_lr)
        if self.use_models:
            self.model_opt = adam(self.model.parameters(), cfg.model_lr)
            if self.value is not None:
                self.value_opt = adam(self.value.parameters(), cfg.model_lr)
        self.target_entropy = cfg.target_entropy_scale * act_dim
        self._step = 0  # updates done (python int: no host sync); saved via get_extra_state
        self.last_mala_accept: list[torch.Tensor] = []  # the shared sampler's per-call state (diffrl.algos.tilts)
        self._guide_scale = 1.0

    # ----------------------------------------------------------------- state
    def _apply(self, fn, *args, **kw):  # .to(device) also moves the schedule's plain tensors
        out = super()._apply(fn, *args, **kw)
        sch = getattr(self, "schedule", None)
        if sch is not None and sch.betas.device != self.log_alpha.device:
            self.schedule = DiffusionSchedule.make(self.cfg.schedule, self.cfg.T, self.log_alpha.device)
        return out

    def get_extra_state(self):
        return {"step": self._step}

    def set_extra_state(self, state):
        self._step = int(state["step"])

    @property
    def step(self) -> int:
        return self._step

    @property
    def device(self) -> torch.device:
        return self.log_alpha.device

    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def policy_lr(self, update: int) -> float:
        """Policy lr of update `update` (1-based): linear from policy_lr to policy_lr_end between
        lr_decay_begin and lr_decay_end, counted in policy-optimiser steps (the reference's optax
        schedule sees the count of its own steps, 0 at the first) or in updates."""
        c = self.cfg
        n = update // c.delay_update - 1 if c.lr_decay_unit == "policy_steps" else update
        if n <= c.lr_decay_begin:
            return c.policy_lr
        if n >= c.lr_decay_end:
            return c.policy_lr_end
        f = (n - c.lr_decay_begin) / (c.lr_decay_end - c.lr_decay_begin)
        return c.policy_lr + f * (c.policy_lr_end - c.policy_lr)

    # ----------------------------------------------------------------- the tilted sampler's parts
    @property
    def tilt_cfg(self) -> TiltConfig:
        return self.cfg.tilt_config()

    @property
    def sample_dim(self) -> int:
        return self.seq_dim

    @property
    def init_scale(self) -> float:
        return self.cfg.init_scale

    @property
    def sampling_net(self) -> nn.Module:
        return self.actor_ema

    def q_agg(self, obs, act, critic=None, agg: str | None = None) -> torch.Tensor:
        """Q aggregated over the twin heads: `agg` (min, mean, max), by default cfg.q_critic_agg."""
        return aggregate((critic or self.critic)(obs, act), agg or self.cfg.q_critic_agg)

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

    # ----------------------------------------------------------------- acting
    def sample_actions(self, obs: torch.Tensor, generator=None, deterministic: bool = True, net=None):
        """Executed actions in [-1, 1]^d (the first action of a plan). deterministic: the evaluation
        action (`eval_actions`, or with eval_tilt the acting routine without noise); otherwise
        the acting routine plus noise noise_scale * alpha, clipped to [-1, 1] only with
        clip_noisy_actions (the environment clips what it receives)."""
        if deterministic and not self.cfg.eval_tilt:
            return self.eval_actions(obs, generator)
        seq, _ = self.select(obs, self.cfg.num_particles, generator, net)
        a = seq[:, :self.act_dim]
        if deterministic:
            return a
        if self.cfg.noise_scale > 0:
            a = a + self.cfg.noise_scale * self.alpha() * torch.randn(a.shape, device=a.device, generator=generator)
        return a.clamp(-1, 1) if self.cfg.clip_noisy_actions else a

    def act(self, obs: np.ndarray, generator=None, deterministic: bool = True) -> np.ndarray:
        """EMA-policy actions for a batch of states, clipped to [-1, 1] and mapped onto the env's box."""
        o = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        a = self.sample_actions(o, generator, deterministic).clamp(-1, 1)
        return (self.action_low + (a + 1) * 0.5 * (self.action_high - self.action_low)).cpu().numpy()

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def dpmd_weights(self, v: torch.Tensor, alpha: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """w = exp(clip((V - m) / s, -c, c) / alpha) (fix_q_norm_bug) or the published exp(clip(V - m / s) / alpha),
        m, s the running mean/std of V (rate q_norm_rate; m = 0, s = 1 at the start, or the first
        batch's with q_norm_init_from_batch, without a host sync), updated after use."""
        cfg = self.cfg
        ready = self.q_stats_ready.bool() | (not cfg.q_norm_init_from_batch)
        m = torch.where(ready, self.q_mean, v.mean())
        s = torch.where(ready, self.q_std, v.std())
        normed = (v - m) / s if cfg.fix_q_norm_bug else v - m / s
        w = torch.exp(normed.clamp(-cfg.q_norm_clip, cfg.q_norm_clip) / alpha)
        if update_stats:
            self.q_mean.copy_(torch.lerp(m, v.mean(), cfg.q_norm_rate))
            self.q_std.copy_(torch.lerp(s, v.std(), cfg.q_norm_rate))
            self.q_stats_ready.fill_(1)
        return w

    # The steps that both algorithms' updates (UPDATES, below the class) are made of.
    def noisy(self, a: torch.Tensor, alpha: torch.Tensor, generator=None) -> torch.Tensor:
        """`a` plus the acting routine's exploration noise, std noise_scale * alpha."""
        if self.cfg.noise_scale > 0:
            a = a + self.cfg.noise_scale * alpha * torch.randn(a.shape, device=a.device, generator=generator)
        return a

    @torch.no_grad()
    def td_target(self, b: dict, alpha: torch.Tensor, generator=None) -> tuple:
        """(a', min Q_target(s', a'), the TD target) with a' at s' from the current policy, tilted and
        selected with min Q (td_select_agg), plus the exploration noise (target_noise)."""
        cfg, nobs = self.cfg, b["next_obs"]
        td_agg = "min" if cfg.td_select_agg == "min" else None
        a_seq, _ = self.select(nobs, cfg.td_particles or cfg.num_particles, generator, self.actor, agg=td_agg)
        if cfg.target_noise:
            a_seq = self.noisy(a_seq, alpha, generator)
        q_next = self.critic_target(nobs, a_seq[:, :self.act_dim]).min(0).values
        target = cfg.reward_scale * b["reward"] + cfg.gamma * (1 - b["terminal"]) * q_next
        return a_seq, q_next, target

    def critic_update(self, b: dict, target: torch.Tensor) -> dict:
        """One TD step of the twin critic towards `target`."""
        q = self.critic(b["obs"], b["action"])
        critic_loss = (q - target).pow(2).mean(-1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        return {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}

    def model_update(self, b: dict, q_next: torch.Tensor, generator=None) -> dict:
        """One step of the world model and of the state value V_psi (regressed on q_next), if used."""
        if not self.use_models:
            return {}
        loss, m = self.model.loss(b, generator)
        if self.value is not None:
            v_loss = (self.value(b["next_obs"]) - q_next).pow(2).mean()
            m["value_loss"] = v_loss.detach()
            self.value_opt.zero_grad(set_to_none=True)
            v_loss.backward()
            self.value_opt.step()
        self.model_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.model_opt.step()
        return m

    def policy_update(self, loss_fn) -> dict:
        """One policy step on loss_fn() -> (loss, metrics) at this update's lr, the critic frozen (the
        loss needs gradients w.r.t. the policy only); then the EMA and target-critic updates."""
        lr = self.policy_lr(self._step)
        for g in self.actor_opt.param_groups:
            g["lr"] = lr
        self.critic.requires_grad_(False)
        try:
            loss, m = loss_fn()
        finally:
            self.critic.requires_grad_(True)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        soft_update(self.actor_ema, self.actor, self.cfg.ema_rate)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        return dict(policy_loss=loss.detach(), **m)

    def temperature_update(self) -> None:
        """Every alpha_every updates (tune_entropy): one step of log(alpha) (H(alpha) - target entropy)."""
        cfg = self.cfg
        if not (cfg.tune_entropy and self._step % cfg.alpha_every == 0):
            return
        ent = 0.5 * self.act_dim * (math.log(2 * math.pi * math.e) + 2 * math.log(cfg.noise_scale or 1.0)
                                    + 2 * self.log_alpha.detach())
        alpha_loss = self.log_alpha * (ent - self.target_entropy)
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

    def update(self, b: dict, generator=None) -> dict:
        """One update of cfg.alg (UPDATES): a critic step (and model step), every delay_update updates a
        policy step with the EMA and target updates, every alpha_every updates a temperature step.
        Returns detached tensors."""
        self._step += 1
        return UPDATES[self.cfg.alg](self, b, generator)

    def load_pretrained(self, src) -> None:
        """Initialise policy (and its EMA) and critic (and its target) from `src`: an object or dict
        with `actor` and/or `critic` (modules or state dicts), e.g. a DiffusionQL agent."""
        get = (lambda k: src.get(k)) if isinstance(src, dict) else (lambda k: getattr(src, k, None))
        for name, targets in (("actor", (self.actor, self.actor_ema)), ("critic", (self.critic, self.critic_target))):
            sd = get(name)
            if sd is None:
                continue
            sd = sd.state_dict() if isinstance(sd, nn.Module) else sd
            for m in targets:
                m.load_state_dict(sd)


# --------------------------------------------------------------------------- the algorithms' updates
def sdac_targets(agent: DiffusionOnline, states, a0, generator) -> tuple:
    """SDAC's regression targets for samples a0 at `states`: t, a_t = q_sample(a0, t, e1), the
    sdac_candidates noises e2_j and their weights softmax_j(V(s, a0_j) beta / alpha), with
    a0_j = clip((a_t - sqrt(1-abar) e2_j) / sqrt(abar)); V from the critic as it is now."""
    cfg, sch = agent.cfg, agent.schedule
    B, C, D = a0.shape[0], cfg.sdac_candidates, a0.shape[1]
    t = torch.randint(0, sch.T, (B,), device=a0.device, generator=generator)
    e1 = torch.randn(a0.shape, device=a0.device, generator=generator)
    a_t = sch.q_sample(a0, t, e1)
    e2 = torch.randn((B, C, D), device=a0.device, generator=generator)
    cand = ((a_t.unsqueeze(1) - sch.sqrt_1m_abar[t, None, None] * e2) / sch.sqrt_abar[t, None, None]).clamp(-1, 1)
    with torch.no_grad():
        v = agent.tilt_value(states.repeat_interleave(C, 0), cand.reshape(B * C, D), generator).view(B, C)
        w = torch.softmax(v * cfg.sdac_beta / agent.alpha(), 1)
    return t, a_t, e2, w


def sdac_loss(agent: DiffusionOnline, states, targets: tuple) -> tuple[torch.Tensor, dict]:
    """SDAC's reverse-sampling score matching at `states`: mean_B sum_j w_j ||eps_theta(a_t, t, s) - e2_j||^2 / d."""
    t, a_t, e2, w = targets
    eps = agent.actor(a_t, t, states)
    per = (w * (eps.unsqueeze(1) - e2).pow(2).mean(-1)).sum(1)
    ent = -(w * w.clamp_min(1e-30).log()).sum(1).mean()
    return per.mean(), {"weight_entropy": ent}


def sdac_update(agent: DiffusionOnline, b: dict, generator=None) -> dict:
    """sdac, the reference's `--alg sdac` (pnielsen2/inference_mirror_descent): reverse-sampling score matching."""
    cfg, obs, nobs = agent.cfg, b["obs"], b["next_obs"]
    policy_step = agent.step % cfg.delay_update == 0
    alpha = agent.alpha()
    a_seq, q_next, target = agent.td_target(b, alpha, generator)
    if policy_step and cfg.sdac_loss_states == "s":
        # the reference: a fresh acting-routine sample at s, weighted by the critic before this
        # update's critic step
        with torch.no_grad():
            a_s, _ = agent.select(obs, cfg.num_particles, generator, agent.actor, agg="min")
            states, targets = obs, sdac_targets(agent, obs, agent.noisy(a_s, alpha, generator), generator)
    metrics = {**agent.critic_update(b, target), "alpha": alpha}
    metrics.update(agent.model_update(b, q_next, generator))
    if policy_step:
        if cfg.sdac_loss_states == "next":  # the TD sample a' at s', weighted by the critic after its step
            a_bc = a_seq.clamp(-1, 1) if cfg.clip_noisy_actions else a_seq
            states, targets = nobs, sdac_targets(agent, nobs, a_bc, generator)
        metrics.update(agent.policy_update(lambda: sdac_loss(agent, states, targets)))
    agent.temperature_update()
    return metrics


def dpmd_loss(agent: DiffusionOnline, states, a0, w, generator=None) -> tuple[torch.Tensor, dict]:  # w None: 1
    """DPMD's weighted denoising loss at `states`: mean_B w ||eps(q_sample(a0, t, z), t, s) - z||^2 / d."""
    sch = agent.schedule
    t = torch.randint(0, sch.T, (a0.shape[0],), device=a0.device, generator=generator)
    z = torch.randn(a0.shape, device=a0.device, generator=generator)
    per = (agent.actor(sch.q_sample(a0, t, z), t, states) - z).pow(2).mean(-1)
    if w is None:
        return per.mean(), {}
    return (w * per).mean(), {"weight_mean": w.mean(), "weight_max": w.max()}


def dpmd_update(agent: DiffusionOnline, b: dict, generator=None) -> dict:
    """dpmd, the reference's `--alg dpmd` (pnielsen2/inference_mirror_descent): mirror descent on the tilted a'."""
    cfg, nobs = agent.cfg, b["next_obs"]
    policy_step = agent.step % cfg.delay_update == 0
    alpha = agent.alpha()
    a_seq, q_next, target = agent.td_target(b, alpha, generator)
    metrics = {**agent.critic_update(b, target), "alpha": alpha}
    a_bc = a_seq.clamp(-1, 1) if cfg.clip_noisy_actions else a_seq  # the BC target
    w = None
    if not cfg.dpmd_constant_weight:
        # the weight is the value of the BC target itself, after one critic step; the running
        # statistics move every update (the reference computes the policy loss every update)
        with torch.no_grad():
            w = agent.dpmd_weights(agent.tilt_value(nobs, a_bc, generator), alpha)
    if cfg.dpmd_double_q_update:
        agent.critic_opt.step()  # published: the same critic gradients applied twice
    metrics.update(agent.model_update(b, q_next, generator))
    if policy_step:
        metrics.update(agent.policy_update(lambda: dpmd_loss(agent, nobs, a_bc, w, generator)))
    agent.temperature_update()
    return metrics


UPDATES = {"sdac": sdac_update, "dpmd": dpmd_update}
