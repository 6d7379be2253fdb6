"""Diffusion-QL (Wang et al. 2023) and its variants, selected by `DQLConfig.variant`; each variant is
one actor loss (ACTOR_LOSSES) and one TD target (NEXT_VALUES), written out below the agent:

- ql: L = L_bc + eta L_q, L_q = -Q_i(s, a_theta) / mean|Q_j(s, a_theta)|.detach() with the
  numerator head i drawn at random (50/50) each step, a_theta sampled by the DDPM chain with
  gradients through all T steps. Twin critic with a Polyak target; TD target
  r + gamma (1-d) min_i Q_target,i(s', a'), a' from the EMA actor (optionally max over 10 a').
- qg: Q-guided score matching: eps_theta regressed to z - eta clip(sqrt((1-abar)/abar) g, -1, 1),
  g = grad_x0 min Q(s, x0_hat) at the detached one-step prediction x0_hat of the noised
  dataset action (unclipped, as in the fork; `qg_clip_x0` clips it to [-1, 1] first); each
  sample's squared error is weighted by 1 / clip(||g||, 0.8, 5).
- edp: Efficient Diffusion Policies as the fork has them: a_theta replaced by the one-step
  approximation x0_hat = (a_t - sqrt(1-abar) eps_theta(a_t)) / sqrt(abar) (clipped to [-1, 1],
  differentiable through eps_theta) of the dataset action noised with its own fresh t and noise
  (not those of L_bc); actor loss L_bc - eta mean min(Q1, Q2)(s, x0_hat) (TD3-style, unnormalised);
  DDPM sampling. Options: `edp_q_loss: ratio` (ql's normalised ratio), `edp_fresh_noise: false`
  (reuse L_bc's noised action), `sampler: dpm` (the EDP paper's DPM-Solver, below).
- bc: L_bc only (no critic training; act() returns one actor sample per state).
- eg_ood (ours, `eg_ood_form: ours`): ql's actor loss; the TD target penalises next actions the
  current diffusion actor finds unlikely. Log-likelihood proxy of (s', a'): minus the T-level denoising loss
  -1/T sum_t ||eps_theta(sqrt(abar_t) a' + sqrt(1-abar_t) z_t, t, s') - z_t||^2 (the diffusion
  ELBO up to constants and per-level weights; one z_t per level). Threshold: the
  `ood_quantile` quantile of the same proxy on the batch's dataset pairs (s, a), so the cut
  adapts to the actor's fit. Target: r + gamma (1-d) (min Q_target(s', a') -
  ood_penalty * 1[proxy(a') < threshold]) (per candidate before the max with max_q_backup).
  This is our redesign. The fork's eg_ood (`eg_ood_form: fork`) trains qg's actor loss with the
  plain TD target: its penalty term is (mask x the detached target), a constant that moves no
  critic parameter, judged by a behaviour model whose optimiser never steps.

Learning rate: cosine decay from lr to 0 over `lr_decay_steps` gradient steps, stepped every
gradient step (it really decays). `published_lr_decay` (on in every named row, as released)
reproduces the released code, whose CosineAnnealingLR(T_max = the run's epochs of 1000 steps)
was stepped once per 50-epoch evaluation round (every 50,000 gradient steps, 40 times over 2M
steps), which leaves the lr ~constant: at a 2M-step run the last lr is 0.998 lr.

Evaluation, as released: the online actor (not its EMA; `eval_ema` evaluates the EMA), with
eval_candidates samples per state and one drawn ~ softmax(min Q_target) (Diffusion-QL: 50; the
fork's qg, edp and eg_ood: 1). The EMA (targets a') keeps its initial weights until ema_start
(`ema_copy_before_start` copies the actor before), as released.

Also here: `select_checkpoint` (model selection) and `DPMSolver`. The nets' Mish (diffrl.nets.Mish)
is computed through one sigmoid on CPU, where aten::mish is slow. `DiffusionQL.update_critic` runs a critic-only TD step (warm-up).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from diffrl.algos.bc import ema_update
from diffrl.diffusion import DiffusionSchedule, dpm_solver_2m, vp_betas
from diffrl.fields import ConfigError, param
from diffrl.nets import adam, Critic, NoiseNet, soft_update

VARIANTS = ("ql", "qg", "edp", "bc", "eg_ood")


@dataclass
class DQLConfig:
    """Diffusion-QL family (docs/algorithms.md, "Diffusion-QL family"); defaults: halfcheetah-medium."""
    variant: str = param("ql", "ql: BC + Q through the sampled chain; qg: Q-guided score matching; edp: one-step "
                         "x0 approximation + DPM-Solver; bc: BC only; eg_ood: ql + OOD-penalised TD target",
                         choices=VARIANTS)
    T: int = param(5, "diffusion steps of the discrete VP schedule", low=1)
    beta_min: float = param(0.1, "VP schedule b_min", low=0, low_open=True)
    beta_max: float = param(10.0, "VP schedule b_max", low=0, low_open=True)
    eta: float = param(1.0, "weight of the Q loss (ql, edp, eg_ood) or of the Q guidance (qg)", low=0)
    lr: float = param(3e-4, "Adam learning rate of actor and critic (start of the cosine decay)",
                      low=0, low_open=True)
    lr_decay: bool = param(True, "cosine-decay both learning rates to 0 over lr_decay_steps")
    lr_decay_steps: int = param(0, "T_max of the cosine decay in gradient steps; 0 = the run's total "
                                "steps, which the training stage passes as total_steps", low=0)
    published_epoch_steps: int = param(1000, "published_lr_decay: gradient steps per epoch (the released "
                                       "T_max counts epochs)", low=1)
    selection_k: int = param(1, "offline model selection: of the evaluated checkpoints, the latest among the "
                             "selection_k with the smallest mean BC loss (reported next to the final score)", low=1)
    published_selection: bool = param(False, "reproduce the released selection (argsort(bc_loss) compared "
                                      "elementwise with top_k)")
    published_lr_decay: bool = param(False, "reproduce the released code: the cosine (T_max = the run's "
                                     "epochs) is stepped only every published_lr_step_every gradient steps "
                                     "(40 times over 2M steps), so the lr stays ~constant")
    published_lr_step_every: int = param(50_000, "gradient steps between scheduler steps with published_lr_decay "
                                         "(eval_freq 50 epochs x 1000 steps in the released code)", low=1)
    batch_size: int = param(256, "minibatch size", low=1)
    hidden: int = param(256, "hidden width of the noise net and the critics", low=1)
    layers: int = param(3, "hidden layers of the noise net and the critics", low=1)
    discount: float = param(0.99, "discount gamma", low=0, high=1)
    tau: float = param(0.005, "Polyak rate of the target critic (every step)", low=0, high=1, low_open=True)
    max_q_backup: bool = param(False, "TD target: max over backup_samples sampled a' per s', then min over heads")
    backup_samples: int = param(10, "a' samples per s' with max_q_backup", low=1)
    grad_norm: float = param(9.0, "max grad norm of actor and critic (9 for halfcheetah-medium; 0 = off)", low=0)
    ema_decay: float = param(0.995, "EMA decay of the actor copy used for targets and evaluation", low=0, high=1)
    ema_every: int = param(5, "gradient steps between EMA updates", low=1)
    ema_start: int = param(1000, "gradient step at which EMA tracking starts", low=0)
    ema_copy_before_start: bool = param(False, "ours: copy the actor into the EMA before ema_start (released: "
                                        "the EMA keeps the initial weights until then)")
    eval_ema: bool = param(False, "ours: evaluate the EMA actor (released: the online actor)")
    eval_candidates: int = param(50, "actions sampled per state at evaluation; one is drawn ~ softmax(Q_target)",
                                 low=1)
    eval_temperature: float = param(1.0, "softmax temperature of the candidate choice (published: 1)",
                                    low=0, low_open=True)
    sampler: str = param("ddpm", "action sampler: ddpm (ancestral, as released, the fork's edp included), "
                         "dpm (DPM-Solver++(2M), deterministic, the EDP paper's)", choices=("ddpm", "dpm"))
    dpm_steps: int = param(0, "DPM-Solver steps over the discrete times (0 = T)", low=0)
    qg_grad_clip_low: float = param(0.8, "qg: per-sample weight 1/clip(||grad Q||, low, high): low", low=0,
                                    low_open=True)
    qg_grad_clip_high: float = param(5.0, "qg: per-sample weight 1/clip(||grad Q||, low, high): high", low=0,
                                     low_open=True)
    qg_clip_x0: bool = param(False, "ours: qg takes Q and its gradient at x0_hat clipped to [-1, 1] (the fork: "
                             "unclipped)")
    edp_q_loss: str = param("min", "edp actor Q term: min (the fork: -mean min(Q1, Q2)), ratio (ql's "
                            "-Q_i / mean|Q_j|)", choices=("min", "ratio"))
    edp_fresh_noise: bool = param(True, "edp: x0_hat from the dataset action noised with its own t and noise "
                                  "(the fork); false reuses the noised action of L_bc")
    eg_ood_form: str = param("ours", "eg_ood: ours (ql actor loss, OOD-penalised TD target) or fork (qg actor "
                             "loss, plain TD target: the fork's penalty moves no parameter)",
                             choices=("ours", "fork"))
    ood_penalty: float = param(1.0, "eg_ood: subtracted from min Q_target(s', a') when a' is judged OOD "
                               "(reward units)", low=0)
    ood_quantile: float = param(0.05, "eg_ood: OOD threshold = this quantile of the likelihood proxy of the "
                                "batch's dataset actions", low=0, high=1)

    def check(self, prefix: str) -> None:
        if self.qg_grad_clip_low > self.qg_grad_clip_high:
            raise ConfigError(f"{prefix}.qg_grad_clip_low={self.qg_grad_clip_low} exceeds "
                              f"{prefix}.qg_grad_clip_high={self.qg_grad_clip_high}: make low <= high")
        if self.dpm_steps > self.T:
            raise ConfigError(f"{prefix}.dpm_steps={self.dpm_steps} exceeds T={self.T}: set at most T (0 = T)")


# Published per-task settings: task (D4RL id without version) -> {section: {DQLConfig field: value}}; a
# task listed with {} publishes nothing that differs from DQLConfig's defaults.
# Zhendong-Wang/Diffusion-Policies-for-Offline-RL main.py:17-38 (`hyperparameters`, locomotion rows 18-26;
# read at main.py:214-223), commit d871f5c: gn -> grad_norm (clips actor and critic,
# agents/ql_diffusion.py:135-136, 152-153), top_k -> selection_k (offline selection, main.py:133-141).
# The fork DarthUtopian/Online-Adaptive-Diffusion-Policies main.py:17-38 (commit 1f0f5b3) holds the same
# table byte for byte, read at main.py:377-386 and passed to qg (main.py:204-219) and edp (main.py:188-203) in
# train_and_tune, which main runs (main.py:430-436). Its main.py has no eg_ood branch (README_lht.md:49's
# `--algo eg_ood` command finds none); agents/eg_diffusion_ood.py takes the same eta/lr/grad_norm arguments,
# so the eg_ood row takes the table too.
PUBLISHED_TASKS = {
    task: {row: dict(values) for row in ("dql", "qg", "edp", "eg_ood")}
    for task, values in {
        "halfcheetah-medium": {},                                 # gn 9.0, top_k 1: the defaults
        "hopper-medium": {"selection_k": 2},                      # gn 9.0
        "walker2d-medium": {"grad_norm": 1.0},                    # top_k 1
        "halfcheetah-medium-replay": {"grad_norm": 2.0},          # top_k 0: see below
        "hopper-medium-replay": {"grad_norm": 4.0, "selection_k": 2},
        "walker2d-medium-replay": {"grad_norm": 4.0},             # top_k 1
        "halfcheetah-medium-expert": {"grad_norm": 7.0},          # top_k 0: see below
        "hopper-medium-expert": {"grad_norm": 5.0, "selection_k": 2},
        "walker2d-medium-expert": {"grad_norm": 5.0},             # top_k 1
    }.items()
}
# Not applied: every locomotion row has lr 3e-4, eta 1.0, max_q_backup False (the defaults) and
# reward_tune 'no' (raw rewards: DiffusionQL's reward_scale is 1 here); num_epochs 2000 x 1000 steps
# (main.py:80, 184) = 2M gradient steps and eval_freq 50 epochs (an evaluation and a scheduler step every
# 50,000 steps, published_lr_step_every's default) are the budget's (offline_steps, eval_every), not a key
# of this section. top_k 0 (halfcheetah-medium-replay, halfcheetah-medium-expert) has no value here:
# selection_k is >= 1; with published_selection the released rule needs k = 0 (the row where
# argsort(bc_loss) == 0), while our own rule treats k = 0 as 1 (the smallest BC loss), the default.


# --------------------------------------------------------------------------- DPM-Solver
class DPMSolver:
    """Deterministic DPM-Solver++(2M) (Lu et al. 2022) for a discrete VP schedule.

    Data-prediction form on the model's own discrete times t_0 = T-1 > ... > t_{n-1} = 0 (a
    subset when steps < T) and a final first-order step to the clean data (sigma = 0). With
    x0_i the clipped x0 prediction at t_i, h_i = lambda(t_{i+1}) - lambda(t_i),
    lambda = log(alpha / sigma), alpha = sqrt(abar), sigma = sqrt(1 - abar):
        x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (exp(-h_i) - 1) D_i,
        D_0 = x0_0, D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}, r_i = h_{i-1} / h_i.
    Coefficients are python floats, so sampling causes no host sync.
    """

    def __init__(self, betas: torch.Tensor, steps: int = 0):
        abar = torch.cumprod(1 - betas.double(), 0)
        T = len(abar)
        steps = steps or T
        ts = sorted({int(round(x)) for x in np.linspace(T - 1, 0, steps)}, reverse=True)
        self.ts = ts
        self.alpha = [float(abar[t].sqrt()) for t in ts]
        self.sigma = [float((1 - abar[t]).sqrt()) for t in ts]
        self.lam = [math.log(a / s) for a, s in zip(self.alpha, self.sigma)]

    def sample(self, eps_fn, obs, act_dim: int, generator=None, clip: float = 1.0):
        B = obs.shape[0]
        x = torch.randn((B, act_dim), device=obs.device, generator=generator)

        def x0_fn(x, i):
            tt = torch.full((B,), self.ts[i], device=obs.device, dtype=torch.long)
            return ((x - self.sigma[i] * eps_fn(x, tt, obs)) / self.alpha[i]).clamp(-clip, clip)
        # the model's times, then the clean data (sigma = 0): the final step returns the x0 prediction
        return dpm_solver_2m(x, x0_fn, self.alpha + [1.0], self.sigma + [0.0], self.lam + [math.inf], to_clean=True)


# --------------------------------------------------------------------------- agent
class DiffusionQL(torch.nn.Module):
    """Diffusion-QL agent. `name` is "dql" for ql and "dql_<variant>" otherwise."""
    name = "dql"
    extra_args = ("total_steps",)  # constructor arguments beyond the config (diffrl.offline.build_agent)

    def __init__(self, obs_dim: int, act_dim: int, cfg: DQLConfig, device="cpu", total_steps: int | None = None,
                 reward_scale: float = 1.0):
        super().__init__()
        if cfg.variant not in VARIANTS:
            raise ConfigError(f"dql.variant={cfg.variant!r} is not one of {', '.join(VARIANTS)}")
        self.cfg, self.act_dim, self.reward_scale = cfg, act_dim, reward_scale
        self.name = "dql" if cfg.variant == "ql" else f"dql_{cfg.variant}"
        self.actor = NoiseNet(obs_dim, act_dim, cfg.hidden, cfg.layers)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = Critic(obs_dim, act_dim, cfg.hidden, cfg.layers, "mish")
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        betas = vp_betas(cfg.T, cfg.beta_min, cfg.beta_max)
        self.schedule = DiffusionSchedule(betas, device)
        self.dpm = DPMSolver(betas, cfg.dpm_steps)
        self.sampler = cfg.sampler
        # per-level factor sqrt((1 - abar) / abar) of the qg guidance
        self.register_buffer("qg_scale", (self.schedule.sqrt_1m_abar / self.schedule.sqrt_abar).clone(),
                             persistent=False)
        self.to(device)
        self.actor_opt = adam(self.actor.parameters(), cfg.lr, fused_on_cpu=True)
        self.critic_opt = adam(self.critic.parameters(), cfg.lr, fused_on_cpu=True)
        # python-side counters (no host sync); saved through get_extra_state
        self._step = 0
        self._lr_start = 0  # gradient step at which the current lr schedule began
        self._lr_T_max = cfg.lr_decay_steps or int(total_steps or 0)
        self._lr_constant = not cfg.lr_decay
        if cfg.lr_decay and self._lr_T_max <= 0:
            raise ConfigError("dql.lr_decay is on but its length is unknown: set dql.lr_decay_steps or pass "
                              "total_steps (the run's gradient steps) to DiffusionQL")

    # ----------------------------------------------------------------- state
    def get_extra_state(self):
        return {"step": self._step, "lr_start": self._lr_start, "lr_T_max": self._lr_T_max,
                "lr_constant": self._lr_constant}

    def set_extra_state(self, state):
        self._step, self._lr_start = int(state["step"]), int(state["lr_start"])
        self._lr_T_max, self._lr_constant = int(state["lr_T_max"]), bool(state["lr_constant"])

    @property
    def step(self) -> int:
        return self._step

    def current_lr(self) -> float:
        """The lr of the next gradient step (closed-form cosine, clamped at T_max)."""
        cfg = self.cfg
        if self._lr_constant or self._lr_T_max <= 0:
            return cfg.lr
        k = self._step - self._lr_start
        T_max = self._lr_T_max
        if cfg.published_lr_decay:  # scheduler.step() once per evaluation round, T_max in epochs
            k = k // cfg.published_lr_step_every
            T_max = max(1, T_max // cfg.published_epoch_steps)
        k = min(k, T_max)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * k / T_max))

    def _set_lr(self) -> float:
        lr = self.current_lr()
        for opt in (self.actor_opt, self.critic_opt):
            for g in opt.param_groups:
                g["lr"] = lr
        return lr

    # ----------------------------------------------------------------- sampling
    def sample(self, obs: torch.Tensor, generator=None, ema: bool | None = None) -> torch.Tensor:
        """Actions from the actor (the EMA copy if `ema`; default: cfg.eval_ema, the evaluated actor)
        with the configured sampler. Gradients flow through the chain unless called under no_grad."""
        ema = self.cfg.eval_ema if ema is None else ema
        net = self.actor_ema if ema else self.actor
        if self.sampler == "dpm":
            return self.dpm.sample(net, obs, self.act_dim, generator)
        return self.schedule.sample(net, obs, self.act_dim, generator)

    @property
    def eval_sampler(self) -> str | None:
        """What the evaluated actor samples with where it is not the DDPM chain of `schedule` (None:
        that chain, which an inference-time tilt can guide; diffrl/algos/tilted.py)."""
        return "Diffusion-QL's DPM-Solver++(2M)" if self.sampler == "dpm" else None

    @torch.no_grad()
    def choose(self, obs: torch.Tensor, draw, generator=None) -> torch.Tensor:
        """The evaluation choice over candidates `draw(obs_repeated, generator)`: eval_candidates per
        state, one drawn with probability softmax(min Q_target / eval_temperature); one draw per state
        for a critic-free variant or one candidate. act's only path, so a tilted row that draws
        otherwise chooses exactly as this row does, generator draw for generator draw."""
        if not self.trains_critic or self.cfg.eval_candidates == 1:
            return draw(obs, generator)
        N, k = obs.shape[0], self.cfg.eval_candidates
        o_rep = obs.repeat_interleave(k, 0)
        cand = draw(o_rep, generator)
        q = self.critic_target.q_min(o_rep, cand).view(N, k)
        probs = torch.softmax(q / self.cfg.eval_temperature, -1)
        idx = torch.multinomial(probs, 1, generator=generator)  # (N, 1)
        return cand.view(N, k, -1).gather(1, idx.unsqueeze(-1).expand(-1, 1, self.act_dim)).squeeze(1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, generator=None) -> np.ndarray:
        """Batched evaluation actions: `choose` over samples of the evaluated actor (online, or EMA
        with eval_ema)."""
        o = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.schedule.betas.device)
        return self.choose(o, self.sample, generator).cpu().numpy()

    # ----------------------------------------------------------------- losses
    def _noised(self, action, generator):
        B = action.shape[0]
        t = torch.randint(0, self.schedule.T, (B,), device=action.device, generator=generator)
        z = torch.randn(action.shape, device=action.device, generator=generator)
        return self.schedule.q_sample(action, t, z), t, z

    def log_lik_proxy(self, action, obs, generator=None, net=None) -> torch.Tensor:
        """Per-sample -1/T sum_t ||eps(a_t, t, s) - z_t||^2 over all T levels (no grad)."""
        net = net or self.actor
        T, B = self.schedule.T, action.shape[0]
        with torch.no_grad():
            a = action.repeat(T, 1)
            o = obs.repeat(T, 1)
            t = torch.arange(T, device=action.device).repeat_interleave(B)
            z = torch.randn(a.shape, device=a.device, generator=generator)
            err = (net(self.schedule.q_sample(a, t, z), t, o) - z).pow(2).mean(-1)
            return -err.view(T, B).mean(0)

    @property
    def trains_critic(self) -> bool:
        """Whether update() trains the critic (not for CRITIC_FREE variants, whose act() ranks no candidates)."""
        return self.cfg.variant not in CRITIC_FREE

    def _critic_step(self, b, generator) -> dict:
        cfg = self.cfg
        with torch.no_grad():
            nobs = b["next_obs"]
            n = cfg.backup_samples if cfg.max_q_backup else 1
            nobs_rep = nobs.repeat_interleave(n, 0) if n > 1 else nobs
            a2 = self.sample(nobs_rep, generator, ema=True)
            q2, extra = NEXT_VALUES[cfg.variant](self, b, nobs_rep, a2, generator)  # (heads, B n)
            if n > 1:  # released code: max over the a' samples per head, then min over heads
                q2 = q2.view(q2.shape[0], -1, n).max(-1).values
            q_next = q2.min(0).values
            target = self.reward_scale * b["reward"] + cfg.discount * (1 - b["terminal"]) * q_next
        q = self.critic(b["obs"], b["action"])
        critic_loss = (q - target).pow(2).mean(-1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        if cfg.grad_norm > 0:
            extra["critic_grad_norm"] = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_norm,
                                                                       foreach=True)
        self.critic_opt.step()
        return {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean(), **extra}

    def update_critic(self, b: dict, generator=None) -> dict:
        """One critic-only step (TD loss and Polyak target update), e.g. to warm up the critic
        before policy improvement; the actor, its EMA and the step counter are untouched."""
        self._set_lr()
        metrics = self._critic_step(b, generator)
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        return metrics

    def _actor_loss(self, b, generator) -> tuple[torch.Tensor, dict]:
        """The variant's actor loss (ACTOR_LOSSES) and its metrics; the caller freezes the critic."""
        return ACTOR_LOSSES[self.cfg.variant](self, b, generator)

    def update(self, b: dict, generator=None) -> dict:
        cfg = self.cfg
        lr = self._set_lr()
        metrics = {}
        if self.trains_critic:
            metrics.update(self._critic_step(b, generator))
        self.critic.requires_grad_(False)  # the actor loss needs grads w.r.t. actions only
        try:
            actor_loss, m = self._actor_loss(b, generator)
        finally:
            self.critic.requires_grad_(True)
        metrics.update(m)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        if cfg.grad_norm > 0:
            metrics["actor_grad_norm"] = torch.nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_norm,
                                                                        foreach=True)
        self.actor_opt.step()
        self._step += 1
        ema_update(self.actor_ema, self.actor, self._step, cfg)
        if self.trains_critic:
            soft_update(self.critic_target, self.critic, cfg.tau)
        metrics["actor_loss"] = actor_loss.detach()
        metrics["lr"] = torch.tensor(lr)
        return metrics


# --------------------------------------------------------------------------- the variants' actor losses
# Each takes the agent, the batch and the generator and returns (loss, metrics). L_bc is the DDPM
# loss ||eps_theta(a_t, t, s) - z||^2 of the dataset action noised at a random level.
def q_ratio_loss(critic, obs, action, generator) -> torch.Tensor:
    """-Q_i(s, a) mean / mean |Q_j(s, a)| (detached), head i drawn 50/50."""
    q = critic(obs, action)  # (2, B)
    i = torch.randint(0, 2, (1,), device=q.device, generator=generator)
    num = q.index_select(0, i).mean()
    den = q.index_select(0, 1 - i).abs().mean().detach()
    return -num / den


def ql_actor_loss(agent: DiffusionQL, b: dict, generator) -> tuple[torch.Tensor, dict]:
    """ql, Diffusion-QL (Wang et al. 2023, released code): L_bc + eta q_ratio_loss(s, a_theta from the chain)."""
    obs = b["obs"]
    a_t, t, z = agent._noised(b["action"], generator)
    bc_loss = (agent.actor(a_t, t, obs) - z).pow(2).mean()
    a_pi = agent.schedule.sample(agent.actor, obs, agent.act_dim, generator)  # gradients through all T steps
    q_loss = q_ratio_loss(agent.critic, obs, a_pi, generator)
    loss = bc_loss + agent.cfg.eta * q_loss
    return loss, {"bc_loss": bc_loss.detach(), "ql_loss": q_loss.detach()}


def qg_actor_loss(agent: DiffusionQL, b: dict, generator) -> tuple[torch.Tensor, dict]:
    """qg, the Diffusion-QL fork's Q-guided score matching (docs/fidelity.md): eps_theta regressed to z - guide."""
    cfg, obs = agent.cfg, b["obs"]
    a_t, t, z = agent._noised(b["action"], generator)
    eps = agent.actor(a_t, t, obs)
    x0 = agent.schedule.predict_x0(a_t, t, eps.detach())
    if cfg.qg_clip_x0:
        x0 = x0.clamp(-1, 1)
    x0 = x0.requires_grad_(True)
    with torch.enable_grad():
        g, = torch.autograd.grad(agent.critic.q_min(obs, x0).sum(), x0)
    g_norm = g.norm(dim=-1)
    guide = (agent.qg_scale[t, None] * g).clamp(-1, 1)
    target = z - cfg.eta * guide
    w = 1.0 / g_norm.clamp(cfg.qg_grad_clip_low, cfg.qg_grad_clip_high)
    per = (eps - target).pow(2).mean(-1)
    loss = (w * per).mean()
    bc_loss = (eps.detach() - z).pow(2).mean()
    return loss, {"bc_loss": bc_loss, "qg_loss": loss.detach(), "q_grad_norm": g_norm.mean()}


def edp_actor_loss(agent: DiffusionQL, b: dict, generator) -> tuple[torch.Tensor, dict]:
    """edp, Efficient Diffusion Policies (Kang et al. 2023) as the fork has them: L_bc + eta Q loss at x0_hat."""
    cfg, obs, action = agent.cfg, b["obs"], b["action"]
    a_t, t, z = agent._noised(action, generator)
    eps = agent.actor(a_t, t, obs)
    bc_loss = (eps - z).pow(2).mean()
    if cfg.edp_fresh_noise:  # the fork: x0_hat of the dataset action noised anew, not L_bc's a_t
        a_t2, t2, _ = agent._noised(action, generator)
        a_pi = agent.schedule.predict_x0(a_t2, t2, agent.actor(a_t2, t2, obs)).clamp(-1, 1)
    else:
        a_pi = agent.schedule.predict_x0(a_t, t, eps).clamp(-1, 1)
    if cfg.edp_q_loss == "min":
        q_loss = -agent.critic.q_min(obs, a_pi).mean()
    else:
        q_loss = q_ratio_loss(agent.critic, obs, a_pi, generator)
    loss = bc_loss + cfg.eta * q_loss
    return loss, {"bc_loss": bc_loss.detach(), "ql_loss": q_loss.detach()}


def bc_actor_loss(agent: DiffusionQL, b: dict, generator) -> tuple[torch.Tensor, dict]:
    """bc, Diffusion-QL's behaviour-cloning baseline (released bc_diffusion.py): L_bc alone."""
    a_t, t, z = agent._noised(b["action"], generator)
    bc_loss = (agent.actor(a_t, t, b["obs"]) - z).pow(2).mean()
    return bc_loss, {"bc_loss": bc_loss.detach()}


def eg_ood_actor_loss(agent: DiffusionQL, b: dict, generator) -> tuple[torch.Tensor, dict]:
    """eg_ood: ql's actor loss (ours), or qg's (eg_ood_form fork, as the fork trains its eg_ood)."""
    loss_fn = qg_actor_loss if agent.cfg.eg_ood_form == "fork" else ql_actor_loss
    return loss_fn(agent, b, generator)


ACTOR_LOSSES = {"ql": ql_actor_loss, "qg": qg_actor_loss, "edp": edp_actor_loss, "bc": bc_actor_loss,
                "eg_ood": eg_ood_actor_loss}
CRITIC_FREE = ("bc",)  # L_bc alone: update() leaves the critic untrained, act() draws one sample per state


# --------------------------------------------------------------------------- the variants' TD targets
# Each returns the per-head values (heads, B n) of the next actions a' at s' that the TD target
# r + gamma (1 - d) min_i (max over a') takes, and extra metrics.
def next_q(agent: DiffusionQL, b: dict, nobs, a2, generator) -> tuple[torch.Tensor, dict]:
    """ql, qg, edp, bc: Q_target,i(s', a') (Wang et al. 2023, released code)."""
    return agent.critic_target(nobs, a2), {}


def ood_penalised_next_q(agent: DiffusionQL, b: dict, nobs, a2, generator) -> tuple[torch.Tensor, dict]:
    """eg_ood (ours; module docstring): next_q - ood_penalty 1[proxy(a') < threshold]; fork form: next_q."""
    cfg = agent.cfg
    q2 = agent.critic_target(nobs, a2)
    if cfg.eg_ood_form == "fork":
        return q2, {}
    ll_next = agent.log_lik_proxy(a2, nobs, generator)
    ll_data = agent.log_lik_proxy(b["action"], b["obs"], generator)
    thr = torch.quantile(ll_data, cfg.ood_quantile)
    ood = (ll_next < thr).float()
    return q2 - cfg.ood_penalty * ood, {"ood_frac": ood.mean()}


NEXT_VALUES = {"ql": next_q, "qg": next_q, "edp": next_q, "bc": next_q, "eg_ood": ood_penalised_next_q}


# --------------------------------------------------------------------------- model selection
def select_checkpoint(curve: list[dict], mode: str = "online", k: int = 1, published: bool = False) -> int:
    """Index into `curve` (dicts with "score", and "bc_loss" for offline) of the chosen checkpoint.

    online: the argmax of the evaluation score (first one on ties); it peeks at online returns,
    so report it as best-during-training. offline: among the checkpoints whose bc_loss is one
    of the k smallest, the latest. `published=True` reproduces the released selection, which
    took the row where np.argsort(bc_loss) == top_k, top_k = min(len - 1, k): a permutation
    compared elementwise to a number, i.e. the position at which checkpoint top_k is ranked,
    unrelated to the k smallest losses.
    """
    if not curve:
        raise ValueError("select_checkpoint: empty curve")
    if mode == "online":
        return int(np.argmax([c["score"] for c in curve]))
    if mode != "offline":
        raise ValueError(f"select_checkpoint: unknown mode {mode!r}: use online or offline")
    bc = np.array([c["bc_loss"] for c in curve], dtype=np.float64)
    if published:
        top_k = min(len(bc) - 1, k)
        return int(np.flatnonzero(np.argsort(bc) == top_k)[0])
    smallest = np.argsort(bc, kind="stable")[: max(1, k)]
    return int(smallest.max())
