"""DTQL: EDM behaviour diffusion (preconditioning, loss, sampler) and the one-step trust-region policy.

Unit tests on small nets, then learning tests on the 2-D 8-gaussians bandit (obs dim 1, terminal=1):
the behaviour model reproduces all 8 modes and DTQL's act() concentrates on the best mode while
staying on the data support.
"""
import math

import numpy as np
import pytest
import torch

from diffrl.algos.dtql import (DTQL, DTQLBehaviorConfig, DTQLConfig, EDMBehavior, edm_scalings,
                               sample_log_logistic, tanh_gaussian_log_prob)
from diffrl.algos.iql import IQL, IQLConfig
from diffrl.data import TOY_TARGET, ReplayBuffer, toy_dataset
from diffrl.train import train_offline
from diffrl.utils import load_checkpoint, save_checkpoint

OBS, ACT = 3, 2
CENTERS = 0.7 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)


pytestmark = pytest.mark.usefixtures("one_thread")


def small_behavior(obs_dim=OBS, act_dim=ACT, **kw):
    return EDMBehavior(obs_dim, act_dim, DTQLBehaviorConfig(hidden=32, layers=2, **kw))


def small_critic(obs_dim=OBS, act_dim=ACT):
    return IQL(obs_dim, act_dim, IQLConfig(hidden=32, layers=2, layer_norm=True, reward_scaling="none"))


def random_batch(n=64, obs_dim=OBS, act_dim=ACT, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(n, obs_dim, generator=g), "action": torch.rand(n, act_dim, generator=g) * 2 - 1,
            "reward": torch.rand(n, generator=g), "next_obs": torch.randn(n, obs_dim, generator=g),
            "terminal": (torch.rand(n, generator=g) < 0.1).float()}


def finite_scalars(metrics):
    for k, v in metrics.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad, k
        assert torch.isfinite(v), k


# --------------------------------------------------------------------------- EDM pieces
def test_edm_scalings_identities():
    sd = 0.5
    sigma = torch.logspace(math.log10(0.002), math.log10(80), 50, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sd)
    # unit-variance network input and training target when the data has std sigma_data
    torch.testing.assert_close(c_in ** 2 * (sigma ** 2 + sd ** 2), torch.ones_like(sigma))
    torch.testing.assert_close((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sigma ** 2, c_out ** 2)
    torch.testing.assert_close(c_out ** 2, c_skip * sigma ** 2)
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    # D(x; sigma -> 0) = x, D(x; sigma -> inf) = F
    s0 = edm_scalings(torch.tensor([1e-6], dtype=torch.float64), sd)
    assert abs(float(s0[0]) - 1) < 1e-9 and float(s0[1]) < 1e-5
    sinf = edm_scalings(torch.tensor([1e6], dtype=torch.float64), sd)
    assert float(sinf[0]) < 1e-9 and abs(float(sinf[1]) - sd) < 1e-6


def test_noise_level_distribution():
    lo, hi = 0.002, 80.0
    s = sample_log_logistic(200_000, math.log(0.5), 0.5, lo, hi, "cpu", torch.Generator().manual_seed(0))
    assert s.min() >= lo and s.max() <= hi
    q = torch.quantile(s.log().double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    # logistic(loc, scale): quartiles loc -+ scale ln 3
    expected = torch.tensor([math.log(0.5) - 0.5 * math.log(3), math.log(0.5), math.log(0.5) + 0.5 * math.log(3)],
                            dtype=torch.float64)
    torch.testing.assert_close(q, expected, atol=0.02, rtol=0)


def test_loss_is_preconditioned_f_target_regression():
    """Without the clamp, ||(D - a)/c_out||^2 equals ||F - (a - c_skip x)/c_out||^2 (EDM's F-target)."""
    torch.manual_seed(0)
    beh = small_behavior(clamp_denoised=False)
    b = random_batch(32)
    loss = beh.loss(b["action"], b["obs"], torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    sigma = beh.sample_sigma(32, g)
    x = b["action"] + sigma[:, None] * torch.randn(b["action"].shape, generator=g)
    c_skip, c_out, c_in, c_noise = (c[:, None] for c in edm_scalings(sigma, 0.5))
    f = beh.net(c_in * x, c_noise[:, 0], b["obs"])
    ref = (f - (b["action"] - c_skip * x) / c_out).pow(2).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)


def test_behavior_update_and_sampler():
    torch.manual_seed(0)
    beh = small_behavior(sample_steps=4)
    b = random_batch(64)
    before = [p.detach().clone() for p in beh.parameters()]
    m = beh.update(b, torch.Generator().manual_seed(1))
    finite_scalars(m)
    assert any(not torch.equal(p0, p) for p0, p in zip(before, beh.parameters()))
    per = beh.loss(b["action"], b["obs"], reduce=False)
    assert per.shape == (64,) and torch.isfinite(per).all()
    a = beh.sample(b["obs"], torch.Generator().manual_seed(2))
    assert a.shape == (64, ACT) and a.min() >= -1 and a.max() <= 1
    # deterministic given the generator; act() takes numpy
    a2 = beh.act(b["obs"].numpy(), torch.Generator().manual_seed(2))
    np.testing.assert_allclose(a.numpy(), a2, atol=1e-6)
    sig = beh.sigma_schedule(5)
    assert sig.shape == (6,) and float(sig[0]) == pytest.approx(80) and float(sig[-2]) == pytest.approx(0.002)
    assert float(sig[-1]) == 0 and (sig[:-1] > sig[1:]).all()


def test_heun_sampler_is_exact_for_a_known_denoiser():
    """With the ideal denoiser of a Gaussian N(m, s^2) the probability-flow sampler returns N(m, s^2)."""
    beh = small_behavior(obs_dim=1, sample_steps=18)
    m, s = torch.tensor([0.3, -0.2]), 0.1
    beh.denoise = lambda x, sigma, obs, clamp=None: m + (s ** 2 / (s ** 2 + sigma[:, None] ** 2)) * (x - m)
    a = beh.sample(torch.zeros(20000, 1), torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.mean(0), m, atol=0.01, rtol=0)
    torch.testing.assert_close(a.std(0), torch.full((2,), s), atol=0.01, rtol=0)


# --------------------------------------------------------------------------- DTQL agent
def make_dtql(**kw):
    torch.manual_seed(0)
    cfg = DTQLConfig(hidden=32, eval_candidates=16, **kw)
    return DTQL(OBS, ACT, cfg, small_behavior(), small_critic())


def test_dtql_update_shapes_and_frozen_parts():
    agent = make_dtql(update_critic=False, update_behavior=False, gamma_nll=0.5)
    b = random_batch(64)
    beh0 = {k: v.clone() for k, v in agent.behavior.state_dict().items()}
    q0 = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    pi0 = [p.detach().clone() for p in agent.actor.parameters()]
    m = agent.update(b, torch.Generator().manual_seed(0))
    finite_scalars(m)
    assert {"actor_loss", "tr_loss", "q_pi", "nll"} <= set(m)
    # the trust-region and Q terms move only the policy
    for k, v in agent.behavior.state_dict().items():
        assert torch.equal(v, beh0[k]), k
    for k, v in agent.critic.state_dict().items():
        assert torch.equal(v, q0[k]), k
    assert any(not torch.equal(p0, p) for p0, p in zip(pi0, agent.actor.parameters()))
    assert all(p.grad is None for p in agent.behavior.parameters())  # no gradient leaks into frozen nets
    assert all(p.grad is None for p in agent.critic.q.parameters())
    assert all(p.requires_grad for p in agent.behavior.parameters())  # flags restored
    assert all(p.requires_grad for p in agent.critic.q.parameters())


def test_dtql_full_update_trains_critic_and_behavior():
    agent = make_dtql()
    b = random_batch(64)
    q0 = [p.detach().clone() for p in agent.critic.q.parameters()]
    v0 = [p.detach().clone() for p in agent.critic.v.parameters()]
    f0 = [p.detach().clone() for p in agent.behavior.parameters()]
    m = agent.update(b, torch.Generator().manual_seed(0))
    finite_scalars(m)
    assert {"v_loss", "q_loss", "bc_loss", "actor_loss"} <= set(m)
    for before, mod in ((q0, agent.critic.q), (v0, agent.critic.v), (f0, agent.behavior)):
        assert any(not torch.equal(p0, p) for p0, p in zip(before, mod.parameters()))
    # the nested optimisers are exposed on the agent (train_offline checkpoints vars(agent) optimisers)
    opts = {n for n, o in vars(agent).items() if isinstance(o, torch.optim.Optimizer)}
    assert {"actor_opt", "bc_opt", "q_opt", "v_opt"} <= opts


def test_tanh_gaussian_log_prob_matches_sampling_density():
    agent = make_dtql()
    obs = torch.randn(128, OBS)
    with torch.no_grad():
        a, logp = agent.actor(obs, generator=torch.Generator().manual_seed(0))
        ok = a.abs().max(-1).values < 0.999
        ref = tanh_gaussian_log_prob(agent.actor, obs, a)
    torch.testing.assert_close(ref[ok], logp[ok], atol=2e-3, rtol=1e-3)


def test_dtql_act_candidates_batched():
    agent = make_dtql()
    agent.cfg.eval_candidates, agent.cfg.eval_chunk = 64, 100  # 1 state per chunk: exercises chunking
    obs = np.random.default_rng(0).standard_normal((5, OBS)).astype(np.float32)
    a1 = agent.act(obs, torch.Generator().manual_seed(3))
    a2 = agent.act(obs, torch.Generator().manual_seed(3))
    assert a1.shape == (5, ACT) and np.abs(a1).max() <= 1
    np.testing.assert_array_equal(a1, a2)
    assert agent.act(obs[0], torch.Generator().manual_seed(3)).shape == (ACT,)
    # with a very low temperature the pick is the argmax of min Q_target over the candidates
    agent.cfg.eval_temperature = 1e-6
    o = torch.as_tensor(obs[:1])
    g = torch.Generator().manual_seed(4)
    sel = agent.select(o, g)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        cand, _ = agent.actor(o.repeat_interleave(64, 0), generator=g)
        best = cand[agent.critic.q_target.q_min(o.repeat_interleave(64, 0), cand).argmax()]
    torch.testing.assert_close(sel[0], best)


def test_dtql_checkpoint_resume_is_exact(tmp_path):
    """Resuming train_offline from a mid-run checkpoint reproduces the uninterrupted run bit for bit
    (the nested critic/behaviour optimisers travel in the checkpoint)."""
    buf = ReplayBuffer.from_arrays({k: v.numpy() for k, v in random_batch(200).items()})
    kw = dict(steps=6, batch_size=32, seed=0, run_dir=None, env_name=None, eval_every=100, curve_episodes=1)
    a = make_dtql()
    train_offline(a, buf, resume_path=tmp_path / "ck.pt", checkpoint_every=3, **kw)
    assert (tmp_path / "ck.pt").exists()
    b = make_dtql()
    train_offline(b, buf, resume_path=tmp_path / "ck.pt", checkpoint_every=3, **kw)  # resumes at step 3
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # a saved agent reloads into fresh pretrained-model shells
    save_checkpoint(tmp_path / "dtql.pt", {"agent": a.state_dict()})
    c = DTQL.from_configs(OBS, ACT, a.cfg, a.behavior.cfg, a.critic.cfg)
    c.load_state_dict(load_checkpoint(tmp_path / "dtql.pt")["agent"])
    obs = np.zeros((3, OBS), np.float32)
    np.testing.assert_array_equal(a.act(obs, torch.Generator().manual_seed(0)),
                                  c.act(obs, torch.Generator().manual_seed(0)))


def test_configs_validate():
    from diffrl.config import build_section
    from diffrl.fields import ConfigError
    assert build_section("dtql", DTQLConfig, {"alpha": 5}).alpha == 5.0
    assert build_section("dtql_behavior", DTQLBehaviorConfig, {"sample_steps": 5}).sample_steps == 5
    with pytest.raises(ConfigError, match="sigma_min"):
        build_section("dtql_behavior", DTQLBehaviorConfig, {"sigma_min": 100})
    with pytest.raises(ConfigError, match="out of range"):
        build_section("dtql", DTQLConfig, {"eval_candidates": 0})


# --------------------------------------------------------------------------- learning on the toy bandit
def mode_fractions(a: np.ndarray, radius: float = 0.25) -> np.ndarray:
    """Fraction of samples within `radius` of each of the 8 mode centres."""
    d = np.linalg.norm(a[:, None, :] - CENTERS[None], axis=-1)
    near = d.min(1) < radius
    return np.bincount(d.argmin(1)[near], minlength=8) / len(a)


@pytest.fixture(scope="module")
def toy():
    data = toy_dataset("8gaussians", 4000, seed=0)
    buf = ReplayBuffer.from_arrays(data)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    critic = IQL(1, 2, IQLConfig(hidden=64, layers=2, layer_norm=True, reward_scaling="none"), reward_scale=1.0)
    for _ in range(1000):
        critic.update(buf.sample(256, g), g)
    beh = EDMBehavior(1, 2, DTQLBehaviorConfig(hidden=64, lr=1e-3))
    for _ in range(2500):
        beh.update(buf.sample(256, g), g)
    return data, buf, critic, beh


def test_toy_behavior_reproduces_all_modes(toy):
    _, _, _, beh = toy
    a = beh.act(np.zeros((2000, 1), np.float32), torch.Generator().manual_seed(1))
    frac = mode_fractions(a)
    assert frac.min() >= 0.05, frac
    assert frac.sum() >= 0.7, frac


def test_toy_dtql_concentrates_on_best_mode(toy):
    data, buf, critic, beh = toy
    torch.manual_seed(0)
    agent = DTQL(1, 2, DTQLConfig(hidden=64, alpha=1.0), beh, critic)
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        m = agent.update(buf.sample(256, g), g)
    finite_scalars(m)
    agent.eval()
    a = agent.act(np.zeros((300, 1), np.float32), torch.Generator().manual_seed(2))  # 1024 candidates each
    assert a.shape == (300, 2)
    on_target = (np.linalg.norm(a - TOY_TARGET, axis=1) < 0.2).mean()
    assert on_target > 0.5, on_target
    # on the data support: close to some dataset action
    d = np.linalg.norm(a[:, None, :] - data["action"][None], axis=-1).min(1)
    assert (d < 0.1).mean() > 0.9


def test_alpha_is_per_task():
    from diffrl.algos.dtql import DTQLConfig
    from diffrl.config import ConfigError, build_section
    cfg = DTQLConfig()
    assert (cfg.for_env("halfcheetah").alpha, cfg.for_env("hopper").alpha, cfg.for_env("walker2d").alpha) == (1, 5, 5)
    assert cfg.for_env("8gaussians").alpha == cfg.alpha
    with pytest.raises(ConfigError, match="dtql.env_alpha.hopper"):
        build_section("dtql", DTQLConfig, {"env_alpha": {"hopper": "abc"}})
