"""Learning tests of the backbone algorithms (fixed seeds, asserted margins, tiny networks)."""
import numpy as np
import pytest
import torch

from diffrl.algos.bc import BCConfig, DiffusionBC
from diffrl.algos.iql import IQL, IQLConfig
from diffrl.algos.sac import SACOnlineConfig
from diffrl.buffer import ReplayBuffer
from diffrl.data import toy_dataset, toy_actions

pytestmark = pytest.mark.learning


def _train(agent, data, steps, batch=256, seed=0):
    buf = ReplayBuffer.from_arrays(data)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        agent.update(buf.sample(batch, g), g)
    return agent


def _mode_shares(actions):
    centers = np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1) * 0.7
    d = np.linalg.norm(actions[:, None] - centers[None], axis=-1)
    near = d.min(1) < 0.2
    return np.bincount(d.argmin(1)[near], minlength=8) / len(actions), near.mean()


def test_diffusion_bc_reproduces_every_mode_of_8gaussians():
    # T=20: a 5-step DDPM cannot resolve 8 modes this tight even with the exact score (its last
    # step returns E[a_0 | a_1] at noise std 0.44): 25% of samples land within 0.2 of a mode at
    # T=5 versus 91% at T=20 (measured with the analytic mixture score).
    torch.manual_seed(0)
    data = toy_dataset("8gaussians", 4000, seed=0)
    agent = _train(DiffusionBC(1, 2, BCConfig(T=20, hidden=128, lr=1e-3, ema_start=0)), data, 6000)
    a = agent.act(np.zeros((2000, 1), np.float32), generator=torch.Generator().manual_seed(1))
    shares, on_support = _mode_shares(a)
    assert on_support > 0.55, on_support
    assert shares.min() > 0.05, shares  # all 8 modes, none collapsed


def test_iql_critic_ranks_actions_and_awr_improves_on_the_data():
    torch.manual_seed(0)
    data = toy_dataset("8gaussians", 4000, seed=0)
    agent = _train(IQL(1, 2, IQLConfig(hidden=64, policy_hidden=64, temperature=10.0), total_steps=1500), data, 1500)
    a = torch.as_tensor(toy_actions("8gaussians", 500, np.random.default_rng(1)))
    with torch.no_grad():
        q = agent.q.q_min(torch.zeros(500, 1), a).numpy()
    r = 1 - np.linalg.norm(a.numpy() - np.array([0.7, 0.0]), axis=1) / 2
    assert np.corrcoef(q, r)[0, 1] > 0.9
    pi_a = agent.act(np.zeros((1, 1), np.float32))
    pi_r = 1 - np.linalg.norm(pi_a[0] - np.array([0.7, 0.0])) / 2
    assert pi_r > data["reward"].mean() + 0.15, (pi_r, data["reward"].mean())


def test_sac_solves_pendulum():
    from diffrl.online import make_online_agent
    from diffrl.train import train_online
    cfg = SACOnlineConfig(hidden=128, batch_size=128, num_envs=1, warmup=1000)  # the data agent's SAC
    agent, info = train_online(make_online_agent(cfg, "pendulum", 0), "pendulum", cfg, steps=8000, seed=0,
                               eval_every=2000, eval_episodes=3)
    # a random policy returns about -1200 to -1700 here; the last two evaluations (a single 3-episode
    # one swings by 300 as SAC settles) average above -500 for seeds 0, 1 and 2 (-273, -197, -140)
    assert (info["curve"][-1]["return"] + info["curve"][-2]["return"]) / 2 > -500, info["curve"]
