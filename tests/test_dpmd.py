"""SDAC / DPMD (diffrl.algos.dpmd): Pendulum learning, inference-time tilts, world models, the
q-normalisation flag and bit-identical resume. CPU, one torch thread, tiny networks."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from diffrl.algos import dpmd
from diffrl.algos.dpmd import DiffusionOnline, OnlineConfig
from diffrl.algos.tilts import select_particles
from diffrl.algos.dpmd_models import make_dynamics
from diffrl.buffer import ReplayBuffer
from diffrl.data import toy_dataset, toy_reward
from diffrl.envs import make_env
from diffrl.online import make_online_agent, variant_config
from diffrl.train import train_online

from conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- learning
# CI budget: 7000 env steps with one env = 6000 updates after 1000 random steps; tiny nets
# (64 x 2), T = 5, batch 128, lr 1e-3, policy/target updates every update. Evaluation every 1000
# env steps on 5 separate deterministic episodes (no noise, best of 8 particles).
PENDULUM = dict(hidden=64, layers=2, T=5, batch_size=128, num_envs=1, warmup=1000, num_particles=8,
                td_particles=4, lr=1e-3, policy_lr=1e-3, delay_update=1, lr_decay_begin=10**9,
                lr_decay_end=10**9)


def _pendulum(alg, **over):
    cfg = replace(OnlineConfig(), alg=alg, **{**PENDULUM, **over})
    _, info = train_online(make_online_agent(cfg, "pendulum", 0), "pendulum", cfg, steps=7000, seed=0,
                           eval_every=1000, eval_episodes=5)
    returns = [c["return"] for c in info["curve"]]
    assert [c["step"] for c in info["curve"]] == list(range(1000, 7001, 1000))
    assert info["grad_steps"] == 6001 and info["env_steps"] == 7000
    assert len(info["train_episodes"]) == 35  # 200-step training episodes, labelled as such
    return returns


@pytest.mark.learning
def test_sdac_solves_pendulum():
    # alpha starts at (and tracks) ~1; 8 reverse-sampling candidates instead of 64 (CPU time).
    # Random actions score about -1200 .. -1600; the reference-default update (its loss on a fresh
    # sample at s, unclipped noisy actions) is what is tested here, on seed 0.
    returns = _pendulum("sdac", init_alpha=1.0, alpha_every=20, sdac_candidates=8)
    assert max(returns[3:]) > -250, returns  # solved within the budget
    assert returns[-1] > -700, returns  # and still far above random (about -1200 .. -1600)


@pytest.mark.learning
def test_dpmd_solves_pendulum():
    # Fixed alpha 1 (sharp mirror-descent weights) with exploration std noise_scale * alpha = 0.5;
    # policy lr decays 1e-3 -> 1e-4 over policy-optimiser steps 2000-4000 (the reference's unit).
    # DPMD oscillates more than SDAC at this budget, hence best-during and final thresholds.
    returns = _pendulum("dpmd", tune_entropy=False, init_alpha=1.0, noise_scale=0.5, policy_lr_end=1e-4,
                        lr_decay_begin=2000, lr_decay_end=4000)
    assert max(returns[3:]) > -250, returns
    assert returns[-1] > -700, returns


# --------------------------------------------------------------------------- tilts
def _toy_agent(mala_steps=0, steps=400):
    """A policy fitted to the 8-gaussians bandit (one state) and a critic fitted to its reward."""
    cfg = replace(OnlineConfig(), alg="dpmd", hidden=64, layers=2, T=5, mala_steps=mala_steps, num_particles=1)
    torch.manual_seed(0)
    agent = DiffusionOnline(1, 2, cfg)
    buf = ReplayBuffer.from_arrays(toy_dataset("8gaussians", 2000, 0))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(list(agent.actor.parameters()) + list(agent.critic.parameters()), lr=2e-3)
    sch = agent.schedule
    for _ in range(steps):
        b = buf.sample(256, g)
        t = torch.randint(0, sch.T, (256,), generator=g)
        z = torch.randn(b["action"].shape, generator=g)
        bc = (agent.actor(sch.q_sample(b["action"], t, z), t, b["obs"]) - z).pow(2).mean()
        q = (agent.critic(b["obs"], b["action"]) - b["reward"]).pow(2).mean(-1).sum()
        opt.zero_grad()
        (bc + q).backward()
        opt.step()
    return agent


def _tilted(agent, lam, n=512, seed=1, **over):
    agent.cfg = replace(agent.cfg, tfg_lambda=lam, **over)
    obs = torch.zeros(n, 1)
    a = agent.denoise(obs, torch.Generator().manual_seed(seed), net=agent.actor)
    with torch.no_grad():
        return a, float(agent.q_agg(obs, a).mean()), float(toy_reward(a).mean())


def test_guidance_raises_q_of_sampled_actions():
    agent = _toy_agent()
    _, q0, r0 = _tilted(agent, 0.0)
    for over in ({}, {"guidance_schedule": "linear"}, {"guidance_recurrence": 2}):
        _, q1, r1 = _tilted(agent, 2.0, **over)
        assert q1 > q0 + 0.02 and r1 > r0 + 0.02, (over, q0, q1, r0, r1)
    # the published batch-mean gradient scales the guidance by 1 / states: almost no tilt here
    _, qb, _ = _tilted(agent, 2.0, per_sample_guidance=False)
    assert abs(qb - q0) < 0.02, (q0, qb)


def test_mala_tilt_and_acceptance_band():
    agent = _toy_agent(mala_steps=2, steps=300)
    _, q0, _ = _tilted(agent, 0.0)
    acc0 = float(torch.stack(agent.last_mala_accept).mean())
    _, q1, _ = _tilted(agent, 2.0)
    acc1 = float(torch.stack(agent.last_mala_accept).mean())
    assert len(agent.last_mala_accept) == agent.cfg.T * 2
    assert 0.2 < acc0 < 0.95 and 0.2 < acc1 < 0.95, (acc0, acc1)
    assert q1 > q0 + 0.02, (q0, q1)


def test_particle_selection():
    g = torch.Generator().manual_seed(0)
    parts, vals = torch.randn(6, 16, 3, generator=g), torch.randn(6, 16, generator=g)
    best = select_particles(parts, vals, math.inf)
    assert torch.equal(best, parts[torch.arange(6), vals.argmax(1)])
    # finite lambda: draws ~ softmax(lambda V); lambda -> large concentrates on the argmax
    draws = torch.stack([select_particles(parts, vals, 1e4, g) for _ in range(5)])
    assert torch.equal(draws, best.expand_as(draws))
    soft = torch.stack([select_particles(parts[:1], vals[:1], 0.0, g)[0] for _ in range(200)])
    assert len(torch.unique(soft, dim=0)) > 8  # lambda = 0: uniform over the particles

    # through the agent: ONE sampler call over the repeated states, the argmax-Q particle kept
    agent = DiffusionOnline(3, 1, replace(OnlineConfig(), hidden=32, layers=2, T=4))
    obs, P = torch.randn(5, 3), 8
    chosen, v = agent.select(obs, P, torch.Generator().manual_seed(7))
    x = agent.denoise(obs.repeat_interleave(P, 0), torch.Generator().manual_seed(7), n_states=5)
    with torch.no_grad():
        q = agent.q_agg(obs.repeat_interleave(P, 0), x).view(5, P)
    assert torch.equal(chosen, x.view(5, P, 1)[torch.arange(5), q.argmax(1)])
    assert torch.allclose(v, q.max(1).values)


# --------------------------------------------------------------------------- world models
def _transitions(n, seed):
    env, rng = make_env("pendulum"), np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = {k: [] for k in ReplayBuffer.KEYS}
    for _ in range(n):
        a = rng.uniform(-1, 1, 1).astype(np.float32)
        nxt, r, term, trunc, _ = env.step(2 * a)
        for k, v in zip(ReplayBuffer.KEYS, (obs, a, r, nxt, float(term))):
            out[k].append(v)
        obs = env.reset()[0] if term or trunc else nxt
    return {k: torch.as_tensor(np.array(v), dtype=torch.float32) for k, v in out.items()}


@pytest.mark.learning
@pytest.mark.parametrize("kind", ["mlp_ensemble", "diffusion"])
def test_world_model_beats_the_mean_on_held_out_transitions(kind):
    train, test = _transitions(3000, 0), _transitions(1000, 1)
    torch.manual_seed(0)
    model = make_dynamics(kind, 3, 1, ensemble=3, hidden=64, layers=2, T=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(800):
        idx = torch.randint(0, 3000, (128,), generator=g)
        loss, _ = model.loss({k: v[idx] for k, v in train.items()}, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s2, r, p_term = model.predict(test["obs"], test["action"], g)

    def r2(pred, y, y_train):  # baseline: the training mean
        return float(1 - (pred - y).pow(2).sum() / (y - y_train.mean(0)).pow(2).sum())

    delta, delta_train = test["next_obs"] - test["obs"], train["next_obs"] - train["obs"]
    assert r2(s2 - test["obs"], delta, delta_train) > 0.5  # the state change, not just s' ~ s
    assert r2(r, test["reward"], train["reward"]) > 0.5
    assert float(p_term.max()) < 0.05  # Pendulum never terminates


def test_model_tilt_and_plan_values_use_the_models():
    cfg = variant_config("dpmd_plan", hidden=32, layers=2, T=3, model_hidden=32, model_ensemble=2)
    agent = DiffusionOnline(3, 1, cfg)
    assert agent.seq_dim == 3 and agent.actor.net[-1].out_features == 3
    obs, seq = torch.randn(4, 3), torch.rand(4, 3) * 2 - 1
    with torch.no_grad():
        s1, r0, p0 = agent.model.predict(obs, seq[:, :1])
        s2, r1, p1 = agent.model.predict(s1, seq[:, 1:2])
        g = cfg.gamma
        expect = (cfg.reward_scale * r0 + g * (1 - p0) * cfg.reward_scale * r1
                  + g * (1 - p0) * g * (1 - p1) * agent.q_agg(s2, seq[:, 2:]))
        assert torch.allclose(agent.tilt_value(obs, seq), expect, atol=1e-5)
    a = agent.act(np.zeros((2, 3), np.float32), torch.Generator().manual_seed(0))
    assert a.shape == (2, 1)  # the first action of the chosen plan


# --------------------------------------------------------------------------- q normalisation
def test_fix_q_norm_bug_flag_changes_the_weights():
    agent = DiffusionOnline(3, 1, replace(OnlineConfig(), hidden=16, layers=1, T=2))
    alpha = torch.tensor(2.0)
    v = torch.tensor([-30.0, -22.0, -20.0, -18.0, -5.0])
    # the reference starts the running statistics at m = 0, s = 1
    w = agent.dpmd_weights(v, alpha, update_stats=False)
    assert torch.allclose(w, torch.exp(v.clamp(-3, 3) / 2))
    # option: m, s initialised from the first batch
    agent.cfg = replace(agent.cfg, q_norm_init_from_batch=True)
    w = agent.dpmd_weights(v, alpha)
    assert torch.allclose(w, torch.exp(((v - v.mean()) / v.std()).clamp(-3, 3) / 2))
    agent.cfg = replace(agent.cfg, q_norm_init_from_batch=False)
    agent.q_mean.fill_(-20.0)
    agent.q_std.fill_(4.0)
    fixed = agent.dpmd_weights(v, alpha, update_stats=False)
    assert torch.allclose(fixed, torch.exp(((v + 20) / 4).clamp(-3, 3) / 2))
    agent.cfg = replace(agent.cfg, fix_q_norm_bug=False)
    bug = agent.dpmd_weights(v, alpha, update_stats=False)
    assert torch.allclose(bug, torch.exp((v + 20 / 4).clamp(-3, 3) / 2))  # Q - m / s
    assert not torch.allclose(fixed, bug)
    agent.dpmd_weights(v, alpha)  # running update, rate 1e-3
    assert torch.allclose(agent.q_mean, -20.0 + 1e-3 * (v.mean() + 20))


def test_variants_reproduce_the_reference_commands():
    """The online sections of params.yaml are the reference commands (published bugs on where the
    command had them); the registry's guided rows take the top-level tfg_lambda."""
    from diffrl import config
    from diffrl.algos import GUIDED, ONLINE, section_of
    from diffrl.algos.sac import SACConfig
    assert ONLINE == ("sac", "sdac", "dpmd", "dpmd_tilt", "dpmd_select", "dpmd_fixnorm", "dpmd_model", "dpmd_plan",
                      "dpmd_o2o")
    d = variant_config("dpmd")
    assert d.num_particles == 32 and not d.fix_q_norm_bug and d.dpmd_double_q_update
    assert variant_config("dpmd_fixnorm").fix_q_norm_bug and OnlineConfig().fix_q_norm_bug
    t = variant_config("dpmd_tilt")
    assert t.dpmd_constant_weight and t.tfg_lambda == 128 and t.mala_steps == 2
    # its reference guidance is MALA's (per sample, target -E + lambda Q, chains from N(0, I))
    assert not t.mala_sigma_energy and t.mala_init_scale == 1.0 and t.mala_adaptation == "per_chain"
    sac = variant_config("sac")
    assert sac.alg == "sac" and sac.init_temperature == math.e and sac.alpha_lr == 3e-4 and sac.num_envs == 5
    s = variant_config("dpmd_select")
    assert s.num_particles == 128 and s.q_critic_agg == "mean" and s.particle_selection_lambda == 64
    assert math.isinf(OnlineConfig().particle_selection_lambda)
    assert set(GUIDED) == {"dpmd_tilt", "dpmd_model"} and variant_config("dpmd_model").tfg_lambda == 128
    assert variant_config("dpmd").tfg_lambda == OnlineConfig().tfg_lambda  # unguided rows keep their own
    # the `sac` row reads sac_online (section `sac` is the dataset agent, left at SACConfig's defaults)
    p = config.load(ROOT / "params.yaml")
    assert section_of("sac") == "sac_online" and p["sac"] == SACConfig()
    assert {variant_config(r).alg for r in ONLINE} == {"sac", "sdac", "dpmd"}


# --------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


class DieAt:
    def __init__(self, step):
        self.step = step

    def log(self, step, metrics):
        assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in metrics.values())
        if step == self.step:
            raise Killed()

    def log_eval(self, step, score, ret):
        pass


def _resume_run(resume=None, die_at=None):
    cfg = replace(OnlineConfig(), alg="dpmd", hidden=16, layers=1, T=3, batch_size=32, num_envs=2, warmup=40,
                  num_particles=3, td_particles=2, tilt="model", model_hidden=16, model_layers=1,
                  model_ensemble=2, tfg_lambda=0.5, alpha_every=20, lr_decay_begin=50, lr_decay_end=150)
    return train_online(make_online_agent(cfg, "pendulum", 3), "pendulum", cfg, steps=500, seed=3, eval_every=200,
                        eval_episodes=1, log=DieAt(die_at) if die_at else None, resume_path=resume,
                        checkpoint_every=150)


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    full, info = _run_and_state(_resume_run())
    path = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        _resume_run(path, die_at=200)  # grad step 200 = env step 438; last checkpoint at 300
    assert torch.load(path, weights_only=False)["progress"]["env_steps"] == 300
    resumed, info2 = _run_and_state(_resume_run(path))
    assert info2["curve"] == info["curve"] and info2["train_episodes"] == info["train_episodes"]
    assert info2["grad_steps"] == info["grad_steps"] == 231 and len(info["train_episodes"]) == 2
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def _run_and_state(out):
    agent, info = out
    return {k: v.clone() for k, v in agent.state_dict().items() if isinstance(v, torch.Tensor)}, info


def test_a_nan_stops_the_online_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN loss after the first checkpoint: the run stops with the quantity and step named, and
    the checkpoint on disk stays the last good one (written before the NaN)."""
    from diffrl.runlog import NumericalError, RunLog
    real_update = DiffusionOnline.update

    def update(self, b, generator=None):
        metrics = real_update(self, b, generator)
        if self.step >= 120:
            metrics["critic_loss"] = metrics["critic_loss"] * float("nan")
        return metrics
    monkeypatch.setattr(DiffusionOnline, "update", update)
    path = tmp_path / "resume.pt"
    cfg = replace(OnlineConfig(), alg="dpmd", hidden=16, layers=1, T=3, batch_size=32, num_envs=2, warmup=40,
                  num_particles=2, alpha_every=20)
    with pytest.raises(NumericalError, match=r"non-finite critic_loss \(nan\) at step 120"):
        train_online(make_online_agent(cfg, "pendulum", 3), "pendulum", cfg, steps=500, seed=3, eval_every=10_000,
                     eval_episodes=1,
                     log=RunLog(None, 230, "nan test", every=1000), resume_path=path, checkpoint_every=150)
    ck = torch.load(path, weights_only=False)
    assert ck["progress"]["env_steps"] == 150 and ck["progress"]["grad_steps"] < 120
    assert all(torch.isfinite(v).all() for v in ck["agent"].values() if torch.is_tensor(v) and v.is_floating_point())


def test_o2o_checks_the_offline_run_it_starts_from():
    from diffrl.fields import ConfigError
    from diffrl.online import check_offline_init
    cfg = variant_config("dpmd_o2o")
    ck = {"meta": {"config": {"hidden": 256, "layers": 3, "T": 5}}}
    check_offline_init("dpmd_o2o", cfg, ck, "runs/x/dql/seed0")  # Diffusion-QL's shapes: fine
    ck["meta"]["config"]["T"] = 20
    with pytest.raises(ConfigError, match=r"dpmd_o2o.T=5 does not match .* set dpmd_o2o.T: 20"):
        check_offline_init("dpmd_o2o", cfg, ck, "runs/x/dql/seed0")


# --------------------------------------------------------------------------- reference fidelity (fidelity.md O1-O14)
class QuadraticEnergy(torch.nn.Module):
    """E(x) = 0.5 ||x||^2 for every level and state: grad E = x, known in closed form."""

    def energy(self, a_t, t, obs):
        return 0.5 * a_t.pow(2).sum(-1)

    def forward(self, a_t, t, obs):
        return a_t


def _mala_agent(**over):
    cfg = replace(OnlineConfig(), alg="dpmd", hidden=16, layers=1, T=4, mala_steps=1, num_particles=1,
                  tfg_lambda=3.0, **over)
    agent = DiffusionOnline(2, 2, cfg)
    agent.actor = agent.actor_ema = QuadraticEnergy()
    w = torch.tensor([0.3, -0.2])
    agent.tilt_value = lambda obs, a, generator=None, agg=None: a @ w  # V(s, a) = w . a
    return agent, w


@pytest.mark.parametrize("n", [1, 64])
def test_mala_target_is_minus_energy_plus_lambda_q_per_sample(n):
    """O1, O2: log target -E + lambda V(x0_hat(x)), each sample with its own gradient whatever the
    number of states (per_sample_guidance=False only scales the plain guidance path)."""
    agent, w = _mala_agent(per_sample_guidance=False)
    g = torch.Generator().manual_seed(0)
    agent.denoise(torch.zeros(n, 2), g)  # sets the per-call state of the sampler
    sch, t, lam = agent.schedule, 2, 3.0
    x = 0.1 * torch.randn(n, 2, generator=g)
    tt = torch.full((n,), t)
    logp, grad, eps = agent._log_target(agent.actor, x, tt, t, torch.zeros(n, 2), lam, None, None)
    c = (1 - sch.sqrt_1m_abar[t]) / sch.sqrt_abar[t]  # x0_hat = c x when eps = x
    assert torch.allclose(eps, x)
    assert torch.allclose(logp, -0.5 * x.pow(2).sum(-1) + lam * c * (x @ w), atol=1e-6)
    assert torch.allclose(grad, -x + lam * c * w, atol=1e-6)
    # option: the energy term divided by sqrt(1 - abar_t)
    agent.cfg = replace(agent.cfg, mala_sigma_energy=True)
    logp2, _, _ = agent._log_target(agent.actor, x, tt, t, torch.zeros(n, 2), lam, None, None)
    assert torch.allclose(logp2, -0.5 * x.pow(2).sum(-1) / sch.sqrt_1m_abar[t] + lam * c * (x @ w), atol=1e-6)


def test_mala_chain_starts_from_unit_gaussian_and_adapts_on_realised_acceptance(monkeypatch):
    """O3: x_T ~ N(0, I) for MALA chains; O11: the step size of each particle chain moves with the
    fraction of its proposals accepted (a multiple of 1 / states)."""
    agent, _ = _mala_agent()
    starts = []
    real = agent._mala_level

    def spy(net, x, tt, t, *args):
        if t == agent.cfg.T - 1:
            starts.append(x.clone())
        return real(net, x, tt, t, *args)
    monkeypatch.setattr(agent, "_mala_level", spy)
    B, P = 1000, 4
    agent.denoise(torch.zeros(B * P, 2), torch.Generator().manual_seed(0), n_states=B)
    assert 0.95 < float(starts[0].std()) < 1.05
    fractions = torch.stack(agent.last_mala_accept) * B * P
    assert torch.allclose(fractions, fractions.round(), atol=1e-3)  # realised accepts, not probabilities


def test_evaluation_is_the_untilted_argmax_of_min_q():
    """O4: EMA policy without tilt, argmax of min(Q1, Q2) over num_particles, no noise; eval_tilt
    evaluates with the acting routine (tilt, q_critic_agg, soft selection) instead."""
    cfg = replace(OnlineConfig(), hidden=16, layers=1, T=3, num_particles=6, tfg_lambda=50.0, q_critic_agg="max",
                  particle_selection_lambda=0.5, init_alpha=10.0)
    agent = DiffusionOnline(3, 2, cfg)
    with torch.no_grad():
        for p in agent.actor.parameters():  # the online policy differs from the EMA one
            p.add_(0.5)
    obs = torch.randn(4, 3)
    a = agent.sample_actions(obs, torch.Generator().manual_seed(5), deterministic=True)
    o = obs.repeat_interleave(6, 0)
    x = agent.denoise(o, torch.Generator().manual_seed(5), agent.actor_ema, guided=False, n_states=4)
    with torch.no_grad():
        q = agent.critic(o, x).min(0).values.view(4, 6)
    assert torch.equal(a, x.view(4, 6, 2)[torch.arange(4), q.argmax(1)])
    # the evaluate stage and the training-time evaluation both go through act
    mapped = agent.act(obs.numpy(), torch.Generator().manual_seed(5))
    assert np.allclose(mapped, a.numpy(), atol=1e-6)
    agent.cfg = replace(cfg, eval_tilt=True)
    tilted = agent.sample_actions(obs, torch.Generator().manual_seed(5), deterministic=True)
    chosen, _ = agent.select(obs, 6, torch.Generator().manual_seed(5))
    assert torch.equal(tilted, chosen)


def test_policy_lr_decays_over_policy_optimiser_steps():
    """O5: 3e-4 -> 3e-5 between policy steps 25k and 75k = updates 50k-150k with delay_update 2."""
    agent = DiffusionOnline(3, 1, replace(OnlineConfig(), hidden=8, layers=1, T=2))
    assert agent.policy_lr(50_000) == 3e-4  # policy step 24999
    assert math.isclose(agent.policy_lr(100_002), 1.65e-4)  # policy step 50000: half way
    assert agent.policy_lr(150_002) == 3e-5
    agent.cfg = replace(agent.cfg, lr_decay_unit="updates")
    assert agent.policy_lr(100_002) == 3e-5 and math.isclose(agent.policy_lr(50_000), 1.65e-4)


def _tiny_batch(B=8, obs_dim=3, act_dim=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(B, obs_dim, generator=g), "action": torch.rand(B, act_dim, generator=g) * 2 - 1,
            "reward": torch.randn(B, generator=g), "next_obs": torch.randn(B, obs_dim, generator=g),
            "terminal": torch.zeros(B)}


def test_running_q_statistics_start_at_zero_one_and_move_every_update():
    """O6: m = 0, s = 1 at the start, moved at rate 1e-3 on every update (not only policy steps)."""
    agent = DiffusionOnline(3, 1, replace(OnlineConfig(), hidden=16, layers=1, T=2, num_particles=2))
    assert float(agent.q_mean) == 0.0 and float(agent.q_std) == 1.0
    agent.update(_tiny_batch(), torch.Generator().manual_seed(0))  # update 1: no policy step
    assert agent.step == 1 and float(agent.q_mean) != 0.0 and float(agent.q_std) != 1.0
    m1 = float(agent.q_mean)
    agent.update(_tiny_batch(seed=1), torch.Generator().manual_seed(1))
    assert float(agent.q_mean) != m1


def test_update_selects_its_target_action_with_min_q(monkeypatch):
    """O7: the update's a' is tilted and selected with min Q whatever q_critic_agg says."""
    agent = DiffusionOnline(3, 1, replace(OnlineConfig(), hidden=16, layers=1, T=2, num_particles=3,
                                          q_critic_agg="max"))
    obs = torch.randn(5, 3)
    chosen, v = agent.select(obs, 3, torch.Generator().manual_seed(2), agg="min")
    x = agent.denoise(obs.repeat_interleave(3, 0), torch.Generator().manual_seed(2), n_states=5)
    with torch.no_grad():
        q = agent.critic(obs.repeat_interleave(3, 0), x).min(0).values.view(5, 3)
    assert torch.equal(chosen, x.view(5, 3, 1)[torch.arange(5), q.argmax(1)])
    seen = []
    real = agent.select
    monkeypatch.setattr(agent, "select", lambda *a, **k: seen.append(k.get("agg")) or real(*a, **k))
    agent.update(_tiny_batch(), torch.Generator().manual_seed(0))
    assert seen == ["min"]
    agent.cfg = replace(agent.cfg, td_select_agg="q_critic_agg")
    agent.update(_tiny_batch(), torch.Generator().manual_seed(0))
    assert seen[-1] is None  # the acting aggregation (q_critic_agg)


def test_linear_guidance_schedule_is_strongest_at_the_clean_end():
    """O8: lambda at t = 0 (and 1) down to lambda / (T-1) at the noisiest level; linear_noisy is ours."""
    agent = DiffusionOnline(3, 1, replace(OnlineConfig(), hidden=8, layers=1, T=5, tfg_lambda=8.0,
                                          guidance_schedule="linear"))
    assert [agent._lambda_t(t) for t in range(5)] == [8.0, 8.0, 6.0, 4.0, 2.0]
    agent.cfg = replace(agent.cfg, guidance_schedule="linear_noisy")
    assert [agent._lambda_t(t) for t in range(5)] == [1.6, 3.2, 4.8, 6.4, 8.0]


def test_sdac_loss_is_on_a_fresh_sample_at_s(monkeypatch):
    """O9: the reference SDAC regresses at the batch's s (a fresh acting sample), not at s'."""
    agent = DiffusionOnline(3, 1, replace(OnlineConfig(), alg="sdac", hidden=16, layers=1, T=2, num_particles=2,
                                          sdac_candidates=4, delay_update=1))
    seen = []
    real = dpmd.sdac_loss
    monkeypatch.setattr(dpmd, "sdac_loss", lambda agent, states, *a: seen.append(states) or real(agent, states, *a))
    b = _tiny_batch()
    m = agent.update(b, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0], b["obs"]) and torch.isfinite(m["policy_loss"])
    agent.cfg = replace(agent.cfg, sdac_loss_states="next")
    agent.update(b, torch.Generator().manual_seed(0))
    assert torch.equal(seen[1], b["next_obs"])


def test_noisy_actions_stay_unclipped():
    """O10: the exploration-noised action is stored and cloned unclipped (clip_noisy_actions clips)."""
    agent = DiffusionOnline(3, 1, replace(OnlineConfig(), hidden=8, layers=1, T=2, num_particles=2, init_alpha=50.0))
    obs = torch.randn(64, 3)
    a = agent.sample_actions(obs, torch.Generator().manual_seed(0), deterministic=False)
    assert float(a.abs().max()) > 1.5
    agent.cfg = replace(agent.cfg, clip_noisy_actions=True)
    assert float(agent.sample_actions(obs, torch.Generator().manual_seed(0), deterministic=False).abs().max()) <= 1


def test_policy_time_embedding_is_the_reference_scaled_sinusoid():
    """O15: the policy embeds its level t as the reference's scaled_sinusoidal_encoding
    (pnielsen2/inference_mirror_descent@833e14c relax/network/blocks.py:228-248; used by
    DACERPolicyNet, blocks.py:190-197, and EnergyPolicyNet, blocks.py:210-214); `time_embedding:
    shared` is the net the online rows had before the option, weight for weight."""
    from diffrl.nets import NoiseNet, ScaledSinusoidalEmbedding, SinusoidalEmbedding
    from diffrl.algos.tilts import EnergyGradNet
    small = dict(hidden=16, layers=2, T=20)
    agent = DiffusionOnline(3, 2, replace(OnlineConfig(), **small))
    assert OnlineConfig().time_embedding == "reference"
    t = torch.tensor([0, 1, 7, 19])
    # blocks.py:233-243: scale 1/sqrt(dim), inv_freq = 10000^(-j / half), concat(sin, cos) * scale
    expect = torch.tensor([[math.sin(s * 10000 ** (-j / 8)) / 4 for j in range(8)]
                           + [math.cos(s * 10000 ** (-j / 8)) / 4 for j in range(8)] for s in t.tolist()])
    for net in (agent.actor, agent.actor_ema):
        assert isinstance(net.time[0], ScaledSinusoidalEmbedding)
        assert torch.allclose(net.time[0](t), expect, atol=1e-6)
    # the energy net of the MALA rows (the reference's EnergyPolicyNet embeds t the same way)
    energy = DiffusionOnline(3, 2, replace(OnlineConfig(), mala_steps=1, **small)).actor
    assert isinstance(energy, EnergyGradNet) and torch.allclose(energy.time[0](t), expect, atol=1e-6)

    # shared: today's network, Diffusion-QL's NoiseNet (frequencies 10000^(-j / (half - 1)), unscaled)
    torch.manual_seed(0)
    shared = DiffusionOnline(3, 2, replace(OnlineConfig(), time_embedding="shared", **small)).actor
    torch.manual_seed(0)
    before = NoiseNet(3, 2, 16, 2)
    assert isinstance(shared.time[0], SinusoidalEmbedding)
    sd, sd_before = shared.state_dict(), before.state_dict()
    assert list(sd) == list(sd_before) and all(torch.equal(sd[k], sd_before[k]) for k in sd)
    old = torch.tensor([[math.sin(s * 10000 ** (-j / 7)) for j in range(8)]
                        + [math.cos(s * 10000 ** (-j / 7)) for j in range(8)] for s in t.tolist()])
    assert torch.allclose(shared.time[0](t), old, atol=1e-6)
    a, obs = torch.randn(4, 2), torch.randn(4, 3)
    assert torch.equal(shared(a, t, obs), before(a, t, obs))
    # the embedding has no parameters: the same seed draws the same weights under either choice
    torch.manual_seed(0)
    ref = DiffusionOnline(3, 2, replace(OnlineConfig(), **small)).actor
    ref_sd = {k: v for k, v in ref.state_dict().items() if k != "time.0.inv_freq"}
    assert list(ref_sd) == [k for k in sd if k != "time.0.freqs"]
    assert all(torch.equal(v, sd[k]) for k, v in ref_sd.items())
    assert not torch.allclose(ref(a, t, obs), before(a, t, obs))
    with pytest.raises(RuntimeError, match="inv_freq"):  # a checkpoint of the other embedding does not load
        ref.load_state_dict(sd)
    # an offline_init row continues its offline run's (Diffusion-QL) net, so it must say shared
    from diffrl.config import build_section
    from diffrl.fields import ConfigError
    with pytest.raises(ConfigError, match="set dpmd_o2o.time_embedding: shared"):
        build_section("dpmd_o2o", OnlineConfig, {"offline_init": "dql"})
    o2o = DiffusionOnline(3, 2, replace(OnlineConfig(), offline_init="dql", time_embedding="shared", **small))
    assert isinstance(o2o.actor.time[0], SinusoidalEmbedding)


# --------------------------------------------------------------------------- the fork's SAC (O14)
def test_fork_sac_log_prob_and_log_std_clip():
    """The fork's SAC: Gaussian log-prob of the pre-tanh sample (no tanh correction), log std
    clipped to [-20, 0.5], GELU; the dataset agent's defaults keep the tanh-corrected density."""
    from diffrl.online import sac_config
    from diffrl.algos.sac import SAC, SACConfig
    from diffrl.nets import TanhGaussianActor
    fork = sac_config(variant_config("sac", hidden=16))
    assert (fork.activation, fork.layers, fork.reward_scale, fork.alpha_lr) == ("gelu", 3, 0.2, 3e-4)
    assert fork.init_temperature == math.e and not fork.tanh_correction
    assert (fork.log_std_min, fork.log_std_max) == (-20.0, 0.5)
    torch.manual_seed(0)
    agent = SAC(3, 2, fork)
    assert isinstance(agent.actor.net[1], torch.nn.GELU) and math.isclose(float(agent.log_alpha.detach()), 1.0)
    with torch.no_grad():
        agent.actor.net[-1].bias[2:] = 5.0  # log std head far above the clip
    obs = torch.randn(16, 3)
    with torch.no_grad():
        a, logp = agent.actor(obs, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu, log_std = agent.actor.net(obs).chunk(2, -1)
    assert float(log_std.min()) > 0.5  # so the clip is what bounds it
    z = mu + math.exp(0.5) * torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    expect = torch.distributions.Normal(mu, math.exp(0.5)).log_prob(z).sum(-1)
    assert torch.allclose(a, torch.tanh(z)) and torch.allclose(logp, expect, atol=1e-5)
    # the dataset agent (SACConfig defaults) is the tanh-corrected actor it always was
    torch.manual_seed(1)
    data_agent = SAC(3, 2, SACConfig(hidden=16))
    ref = TanhGaussianActor(3, 2, 16, 2, "relu")
    ref.load_state_dict(data_agent.actor.state_dict())
    a1, l1 = data_agent.actor(obs, generator=torch.Generator().manual_seed(3))
    a2, l2 = ref(obs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2) and torch.equal(l1, l2)


def test_fork_sac_row_trains_in_the_vector_env_loop(tmp_path):
    """The `sac` row runs in train_online: 5 envs, one update per 5 env steps, rewards scaled by
    0.2; its run saves and reloads as a SAC agent."""
    from diffrl.online import sac_config
    from diffrl.algos.sac import SAC
    from diffrl.offline import build_agent
    cfg = variant_config("sac", hidden=16, layers=1, warmup=100, batch_size=32)
    agent, info = train_online(make_online_agent(cfg, "pendulum", 0), "pendulum", cfg, steps=300, seed=0,
                               eval_every=300, eval_episodes=1,
                               max_episode_steps=20)
    assert isinstance(agent, SAC) and info["env_steps"] == 300 and info["grad_steps"] == 41
    assert len(info["curve"]) == 1 and math.isfinite(info["curve"][0]["return"])
    import dataclasses
    meta = {"section": "sac", "config": dataclasses.asdict(sac_config(cfg)), "extra": {}}
    loaded = build_agent(meta, 3, 1, "cpu")
    loaded.load_state_dict(agent.state_dict())
    assert loaded.act(np.zeros((2, 3), np.float32)).shape == (2, 1)
