"""DTQL: EDM behaviour diffusion (preconditioning, loss, sampler) and the one-step trust-region policy.

Unit tests on small nets, then learning tests on the 2-D 8-gaussians bandit (obs dim 1, terminal=1):
the behaviour model reproduces all 8 modes and DTQL's act() concentrates on the best mode while
staying on the data support.
"""
import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrl.algos.dtql import (DTQL, DTQLBehaviorConfig, DTQLConfig, EDMBehavior, edm_scalings,
                               sample_log_logistic, tanh_gaussian_log_prob)
from diffrl.algos.iql import IQLConfig, IQLCritic
from diffrl.buffer import ReplayBuffer
from diffrl.data import TOY_TARGET, toy_dataset
from diffrl.train import train_offline
from diffrl.nets import Adam, Mish, TanhGaussianActor
from diffrl.utils import load_checkpoint, save_checkpoint

OBS, ACT = 3, 2
CENTERS = 0.7 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)


pytestmark = pytest.mark.usefixtures("one_thread")


def small_behavior(obs_dim=OBS, act_dim=ACT, **kw):
    return EDMBehavior(obs_dim, act_dim, DTQLBehaviorConfig(hidden=32, layers=2, **kw))


def small_critic(obs_dim=OBS, act_dim=ACT):
    return IQLCritic(obs_dim, act_dim, IQLConfig(hidden=32, layers=2, layer_norm=True, reward_scaling="none"))


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
    opts = {n for n, o in vars(agent).items() if isinstance(o, Adam)}
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


# --------------------------------------------------------------------------- fidelity to the released DTQL
def repo_params():
    from diffrl import config
    return config.load(Path(__file__).resolve().parents[1] / "params.yaml")


def test_dtql_critic_trains_on_raw_rewards(tmp_path):
    """params.yaml's dtql_critic trains on the dataset reward as it is (the released reward_tune
    'no'); the iql row keeps IQL's locomotion scaling."""
    from diffrl.data import load_offline
    from diffrl.offline import load_agent, train_run
    data_dir = Path(__file__).resolve().parent / "data" / "halfcheetah_medium_small"
    p = repo_params()
    assert p["dtql_critic"].reward_scaling == "none"
    scales = {}
    for section in ("dtql_critic", "iql"):
        cfg = replace(p[section], hidden=8, layers=1, batch_size=4)
        train_run(section, cfg, env_name="halfcheetah", dataset_dir=str(data_dir), out_dir=tmp_path / section,
                  seed=0, steps=1, eval_every=1, curve_episodes=1, device="cpu", resume_path=None, budget="test")
        scales[section] = load_agent(tmp_path / section)[0].reward_scale
    assert scales["dtql_critic"] == 1.0
    assert scales["iql"] == pytest.approx(load_offline(data_dir, "halfcheetah").locomotion_reward_scale())
    assert scales["iql"] != 1.0
    # with scale 1, Q's target is the dataset reward plus gamma V(s'), nothing else
    critic = IQLCritic(OBS, ACT, replace(p["dtql_critic"], hidden=16, layers=1))
    b = random_batch(32)
    v0, q0 = copy.deepcopy(critic.v), copy.deepcopy(critic.q)
    m = critic.critic_step(b)[0]
    with torch.no_grad():
        target = b["reward"] + 0.99 * (1 - b["terminal"]) * v0(b["next_obs"])
        expected = (q0(b["obs"], b["action"]) - target).pow(2).mean(-1).sum()
    torch.testing.assert_close(m["q_loss"], expected)


def perturbed_critic(**kw):
    """A small IQL critic whose target Q differs from the online Q (as after some training)."""
    torch.manual_seed(0)
    critic = IQLCritic(OBS, ACT, IQLConfig(hidden=32, layers=2, layer_norm=True, reward_scaling="none", **kw))
    with torch.no_grad():
        for p in critic.q_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return critic


def expectile_loss(u, tau=0.7):
    return ((tau - (u < 0).float()).abs() * u.pow(2)).mean()


def test_dtql_value_regresses_on_the_online_critic_in_one_backward_pass():
    """dtql_critic (params.yaml): V's target is min Q of the ONLINE critic, and V and Q take one
    step from the same pre-step networks (Q's target uses V before its update), as released."""
    p = repo_params()
    assert (p["dtql_critic"].value_target, p["dtql_critic"].joint_step) == ("online", True)
    b = random_batch(64)
    critic = perturbed_critic(value_target="online", joint_step=True)
    q0, v0, qt0 = copy.deepcopy(critic.q), copy.deepcopy(critic.v), copy.deepcopy(critic.q_target)
    m = critic.critic_step(b)[0]
    with torch.no_grad():
        v_expected = expectile_loss(q0.q_min(b["obs"], b["action"]) - v0(b["obs"]))
        target = b["reward"] + 0.99 * (1 - b["terminal"]) * v0(b["next_obs"])
        q_expected = (q0(b["obs"], b["action"]) - target).pow(2).mean(-1).sum()
    torch.testing.assert_close(m["v_loss"], v_expected)
    torch.testing.assert_close(m["q_loss"], q_expected)
    # one Adam step on each net from its own loss's gradient (Adam's first step moves each weight by lr)
    for p0, p1 in zip(v0.parameters(), critic.v.parameters()):
        assert torch.all((p1 - p0).abs() <= 3e-4 * 1.001)
    assert any(not torch.equal(a, c) for a, c in zip(q0.parameters(), critic.q.parameters()))
    # the target critic moved by Polyak only
    for c, t0, t1 in zip(critic.q.parameters(), qt0.parameters(), critic.q_target.parameters()):
        torch.testing.assert_close(t1, 0.995 * t0 + 0.005 * c)
    # the shared IQL default is unchanged: V on the target critic, Q's target from the updated V
    iql = perturbed_critic()
    qt0, q0 = copy.deepcopy(iql.q_target), copy.deepcopy(iql.q)
    v0 = copy.deepcopy(iql.v)
    m = iql.critic_step(b)[0]
    with torch.no_grad():
        torch.testing.assert_close(m["v_loss"], expectile_loss(qt0.q_min(b["obs"], b["action"]) - v0(b["obs"])))
        target = b["reward"] + 0.99 * (1 - b["terminal"]) * iql.v(b["next_obs"])
        torch.testing.assert_close(m["q_loss"], (q0(b["obs"], b["action"]) - target).pow(2).mean(-1).sum())
        assert not torch.allclose(m["v_loss"], expectile_loss(q0.q_min(b["obs"], b["action"]) - v0(b["obs"])))


def test_pretrained_critic_steps_the_critic_alone_as_the_iql_row_does():
    """The critic stages (dtql_critic, eda_critic) train IQLCritic: the iql row's critic step, bit
    for bit, and no AWR policy step (its policy stays at its initialisation)."""
    from diffrl.algos import AGENTS
    from diffrl.algos.iql import IQL
    assert AGENTS["dtql_critic"] is AGENTS["eda_critic"] is IQLCritic and AGENTS["iql"] is IQL
    cfg = IQLConfig(hidden=32, layers=2, reward_scaling="none")
    torch.manual_seed(0)
    critic = IQLCritic(OBS, ACT, cfg)
    torch.manual_seed(0)
    row = IQL(OBS, ACT, cfg, total_steps=3)
    policy0 = copy.deepcopy(critic.policy.state_dict())
    for _ in range(3):
        b = random_batch(64)
        assert set(critic.update(b)) == {"v_loss", "q_loss", "q_mean"}
        row.update(b)
    for name in ("q", "q_target", "v"):
        for a, c in zip(getattr(critic, name).parameters(), getattr(row, name).parameters()):
            assert torch.equal(a, c), name
    assert all(torch.equal(v, critic.policy.state_dict()[k]) for k, v in policy0.items())
    assert not all(torch.equal(v, row.policy.state_dict()[k]) for k, v in policy0.items())


def test_score_net_first_layer_is_linear_and_embeds_raw_log_sigma():
    """The released ScoreNetwork: Linear, Linear, Mish, Linear, Mish, Linear, Mish, Linear (4 hidden
    layers, 3 nonlinearities) on concat(x, emb(ln(sigma)/4), s), no factor on c_noise."""
    torch.manual_seed(0)
    beh = EDMBehavior(OBS, ACT, DTQLBehaviorConfig(hidden=16, layers=4))
    net = beh.net
    kinds = [type(m) for m in net.net]
    assert kinds == [torch.nn.Linear, torch.nn.Identity] + [torch.nn.Linear, Mish] * 3 + [torch.nn.Linear]
    x, s = torch.randn(5, ACT), torch.randn(5, OBS)
    c_noise = torch.log(torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0])) / 4
    h = torch.cat([x, net.emb(c_noise), s], -1)
    lin = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    h = lin[0](h)  # no activation between the first two layers
    for layer in lin[1:-1]:
        h = torch.nn.functional.mish(layer(h))
    torch.testing.assert_close(net(x, c_noise, s), lin[-1](h), rtol=1e-5, atol=1e-6)
    # our form as an option: Mish after every hidden layer, c_noise scaled by 100
    ours = EDMBehavior(OBS, ACT, DTQLBehaviorConfig(hidden=16, layers=4, first_layer_activation=True,
                                                    noise_embed_scale=100.0)).net
    assert isinstance(ours.net[1], Mish)
    ours.load_state_dict(net.state_dict())  # same parameters in both forms
    h = torch.cat([x, net.emb(100 * c_noise), s], -1)
    for layer in lin[:-1]:
        h = torch.nn.functional.mish(layer(h))
    torch.testing.assert_close(ours(x, c_noise, s), lin[-1](h), rtol=1e-5, atol=1e-6)


def test_one_step_policy_init_is_orthogonal_with_zero_bias():
    """DTQL's policy starts as the released agents/model.py weight_init: orthogonal weights, zero
    biases; other users of TanhGaussianActor (SAC) keep PyTorch's default init."""
    torch.manual_seed(0)
    agent = DTQL(OBS, ACT, DTQLConfig(hidden=32, layers=3), small_behavior(), small_critic())
    linears = [m for m in agent.actor.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4
    for m in linears:
        w = m.weight.detach()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    plain = DTQL(OBS, ACT, DTQLConfig(hidden=32, layers=3, orthogonal_init=False), small_behavior(), small_critic())
    assert all(m.bias.abs().sum() > 0 for m in plain.actor.modules() if isinstance(m, torch.nn.Linear))
    sac_like = TanhGaussianActor(OBS, ACT, 32, 2)
    assert all(m.bias.abs().sum() > 0 for m in sac_like.modules() if isinstance(m, torch.nn.Linear))


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
    critic = IQLCritic(1, 2, IQLConfig(hidden=64, layers=2, layer_norm=True, reward_scaling="none"), reward_scale=1.0)
    for _ in range(1000):
        critic.update(buf.sample(256, g), g)
    beh = EDMBehavior(1, 2, DTQLBehaviorConfig(hidden=64, lr=1e-3))
    for _ in range(2500):
        beh.update(buf.sample(256, g), g)
    return data, buf, critic, beh


@pytest.mark.learning
def test_toy_behavior_reproduces_all_modes(toy):
    _, _, _, beh = toy
    a = beh.act(np.zeros((2000, 1), np.float32), torch.Generator().manual_seed(1))
    frac = mode_fractions(a)
    assert frac.min() >= 0.05, frac
    assert frac.sum() >= 0.7, frac


@pytest.mark.learning
def test_toy_dtql_concentrates_on_best_mode(toy):
    data, buf, critic, beh = toy
    torch.manual_seed(0)
    # PyTorch's default init here: the toy's state is the constant 0, so with the released zero biases
    # every hidden ReLU unit starts at exactly 0 with zero gradient and only the output bias could learn
    agent = DTQL(1, 2, DTQLConfig(hidden=64, alpha=1.0, orthogonal_init=False), beh, critic)
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


def test_alpha_lr_and_lr_decay_are_per_task_as_published():
    """DTQL's per-task settings come from its table (main.py's offline_hyperparameters), then the row, then the task."""
    from diffrl.config import read_params, validate
    raw = read_params(Path(__file__).resolve().parents[1] / "params.yaml")
    raw["tasks"] = {t: {} for t in ("halfcheetah-medium", "halfcheetah-medium-expert", "hopper-medium",
                                     "walker2d-medium", "hopper-random")}
    raw["tasks"]["walker2d-medium"] = {"dtql": {"alpha": 2.5}}

    def cfg(task, section="dtql"):
        return validate(raw, sections=[section], task=task)[section]
    assert (cfg("halfcheetah-medium").alpha, cfg("halfcheetah-medium-expert").alpha) == (1.0, 50.0)
    hopper = cfg("hopper-medium")
    assert (hopper.alpha, hopper.lr, hopper.lr_decay) == (5.0, 1e-4, True)
    assert cfg("hopper-medium", "dtql_behavior").lr == 1e-4
    assert cfg("walker2d-medium").alpha == 2.5 and cfg("walker2d-medium").lr_decay  # the task's change wins
    assert cfg("hopper-random").alpha == 1.0 and not cfg("hopper-random").lr_decay  # outside the table: defaults


def test_lr_decay_follows_the_reference_cosine_on_every_optimiser():
    torch.manual_seed(0)
    critic = IQLCritic(3, 2, IQLConfig(hidden=16, layer_norm=True, reward_scaling="none"))
    behavior = EDMBehavior(3, 2, DTQLBehaviorConfig(hidden=16))
    agent = DTQL(3, 2, DTQLConfig(hidden=16, lr_decay=True), behavior, critic, total_steps=4)
    b = {"obs": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1, "reward": torch.randn(8),
         "next_obs": torch.randn(8, 3), "terminal": torch.zeros(8)}
    seen = []
    for _ in range(4):
        agent.update(b, torch.Generator().manual_seed(0))
        seen.append([opt.param_groups[0]["lr"] / opt.param_groups[0]["initial_lr"]
                     for opt in (agent.actor_opt, agent.bc_opt, agent.q_opt, agent.v_opt)])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.Adam([torch.zeros(1)], lr=1.0), T_max=4)
    expected = []
    for _ in range(4):  # the lr of step k is the scheduler's after k steps
        expected.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    for row, want in zip(seen, expected):
        assert row == pytest.approx([want] * 4, abs=1e-12)
