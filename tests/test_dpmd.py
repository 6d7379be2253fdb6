"""SDAC / DPMD (diffrl.algos.dpmd): Pendulum learning, inference-time tilts, world models, the
q-normalisation flag and bit-identical resume. CPU, one torch thread, tiny networks."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from diffrl.algos.dpmd import (VARIANTS, DiffusionOnline, OnlineConfig, select_particles, train_online,
                               variant_config)
from diffrl.algos.dpmd_models import make_dynamics
from diffrl.data import ReplayBuffer, toy_dataset, toy_reward
from diffrl.envs import make_env

from conftest import ROOT


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- learning
# CI budget: 7000 env steps with one env = 6000 updates after 1000 random steps; tiny nets
# (64 x 2), T = 5, batch 128, lr 1e-3, policy/target updates every update. Evaluation every 1000
# env steps on 5 separate deterministic episodes (no noise, best of 8 particles).
PENDULUM = dict(hidden=64, layers=2, T=5, batch_size=128, num_envs=1, warmup=1000, num_particles=8,
                td_particles=4, lr=1e-3, policy_lr=1e-3, delay_update=1, lr_decay_begin=10**9,
                lr_decay_end=10**9)


def _pendulum(alg, **over):
    cfg = replace(OnlineConfig(), alg=alg, **{**PENDULUM, **over})
    _, info = train_online("pendulum", cfg, steps=7000, seed=0, eval_every=1000, eval_episodes=5)
    returns = [c["return"] for c in info["curve"]]
    assert [c["step"] for c in info["curve"]] == list(range(1000, 7001, 1000))
    assert info["grad_steps"] == 6001 and info["env_steps"] == 7000
    assert len(info["train_episodes"]) == 35  # 200-step training episodes, labelled as such
    return returns


def test_sdac_solves_pendulum():
    # alpha starts at (and tracks) ~1; 8 reverse-sampling candidates instead of 64 (CPU time).
    # Seeds 0-3 of this config: best evaluation -105 / -123 / -117 / -149, final -372 / -123 / -146 / -149.
    returns = _pendulum("sdac", init_alpha=1.0, alpha_every=20, sdac_candidates=8)
    assert max(returns[3:]) > -250, returns  # solved within the budget
    assert returns[-1] > -700, returns  # and still far above random (about -1200 .. -1600)


def test_dpmd_solves_pendulum():
    # Fixed alpha 1 (sharp mirror-descent weights) with exploration std noise_scale * alpha = 0.5;
    # policy lr decays 1e-3 -> 1e-4 over updates 2000-4000. Seeds 0-3: best -151 / -228 / -153 / -151,
    # final -424 / -228 / -177 / -151 (DPMD oscillates more than SDAC at this budget).
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
    # first batch: m, s initialised from it
    w = agent.dpmd_weights(v, alpha)
    assert torch.allclose(w, torch.exp(((v - v.mean()) / v.std()).clamp(-3, 3) / 2))
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
    assert set(VARIANTS) == {"sac", "sdac", "dpmd", "dpmd_tilt", "dpmd_select", "dpmd_fixnorm", "dpmd_model",
                             "dpmd_plan", "dpmd_o2o"}
    d = variant_config("dpmd")
    assert d.num_particles == 32 and not d.fix_q_norm_bug and d.dpmd_double_q_update
    assert variant_config("dpmd_fixnorm").fix_q_norm_bug and OnlineConfig().fix_q_norm_bug
    t = variant_config("dpmd_tilt")
    assert t.dpmd_constant_weight and t.tfg_lambda == 128 and t.mala_steps == 2
    s = variant_config("dpmd_select")
    assert s.num_particles == 128 and s.q_critic_agg == "mean" and s.particle_selection_lambda == 64
    assert math.isinf(OnlineConfig().particle_selection_lambda)


def test_params_yaml_sections_are_the_named_variants():
    """The pipeline's sections (with the top-level tfg_lambda of the guided ones) equal VARIANTS, so
    the rows of the table are the reference commands."""
    from diffrl import config
    from diffrl.algos import GUIDED, ONLINE_VARIANTS
    p = config.load(ROOT / "params.yaml")
    assert set(GUIDED) == {"dpmd_tilt", "dpmd_model"} and p["tfg_lambda"] == 128
    for name in ONLINE_VARIANTS:
        section = replace(p[name], tfg_lambda=p["tfg_lambda"]) if name in GUIDED else p[name]
        assert section == variant_config(name), name


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
    return train_online("pendulum", cfg, steps=500, seed=3, eval_every=200, eval_episodes=1,
                        log=DieAt(die_at) if die_at else None, resume_path=resume, checkpoint_every=150)


def test_resume_after_a_crash_is_bit_identical(tmp_path):
    full, info = _run_and_state(_resume_run())
    path = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        _resume_run(path, die_at=200)  # grad step 200 = env step 438; last checkpoint at 300
    assert torch.load(path, weights_only=False)["env_steps"] == 300
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
        train_online("pendulum", cfg, steps=500, seed=3, eval_every=10_000, eval_episodes=1,
                     log=RunLog(None, 230, "nan test", every=1000), resume_path=path, checkpoint_every=150)
    ck = torch.load(path, weights_only=False)
    assert ck["env_steps"] == 150 and ck["grad_steps"] < 120
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
