"""Unit tests of the shared backbone: schedules, sampler, networks, buffer, data, stats."""
import math

import numpy as np
import pytest
import torch

from diffrl.buffer import ReplayBuffer
from diffrl.data import DatasetError, load_offline, toy_dataset, TOY_SETS, write_minari
from diffrl.diffusion import DiffusionSchedule, vp_betas
from diffrl.envs import normalized_score
from diffrl.nets import Critic
from diffrl.stats import BELOW_REGIME, summarize


def test_vp_schedule_matches_formula():
    T, bmin, bmax = 5, 0.1, 10.0
    betas = vp_betas(T, bmin, bmax)
    for t in range(1, T + 1):
        alpha = math.exp(-bmin / T - 0.5 * (bmax - bmin) * (2 * t - 1) / T ** 2)
        assert betas[t - 1].item() == pytest.approx(1 - alpha, rel=1e-9)


def test_q_sample_and_x0_prediction_invert():
    s = DiffusionSchedule.make("vp", 5)
    x0, z = torch.rand(64, 3) * 2 - 1, torch.randn(64, 3)
    t = torch.randint(0, 5, (64,))
    assert torch.allclose(s.predict_x0(s.q_sample(x0, t, z), t, z), x0, atol=1e-5)


def test_sampler_is_seeded_and_clipped():
    s = DiffusionSchedule.make("linear", 20)
    eps = lambda x, t, o: 3 * torch.ones_like(x)  # noqa: E731  (pushes far outside the box)
    obs = torch.zeros(10, 4)
    a1 = s.sample(eps, obs, 2, torch.Generator().manual_seed(0))
    a2 = s.sample(eps, obs, 2, torch.Generator().manual_seed(0))
    assert torch.equal(a1, a2) and a1.abs().max() <= 1


def test_fused_critic_equals_separate_heads():
    c = Critic(5, 2, hidden=16, layers=2, n=2)
    s, a = torch.randn(7, 5), torch.randn(7, 2)
    q = c(s, a)
    x = torch.cat([s, a], -1)
    for i in range(2):
        h = x
        for layer in c.net.layers:
            h = c.net.act(h @ layer.weight[i] + layer.bias[i])
        qi = (h @ c.net.out.weight[i] + c.net.out.bias[i]).squeeze(-1)
        assert torch.allclose(q[i], qi, atol=1e-6)


def test_replay_buffer_wraps_and_samples():
    buf = ReplayBuffer(3, 2, capacity=10)
    for i in range(3):
        n = 4
        buf.add(obs=np.full((n, 3), i), action=np.zeros((n, 2)), reward=np.arange(n), next_obs=np.zeros((n, 3)),
                terminal=np.zeros(n))
    assert buf.size == 10 and buf.ptr == 2
    batch = buf.sample(32, torch.Generator().manual_seed(0))
    assert batch["obs"].shape == (32, 3) and batch["reward"].shape == (32,)


def test_normalised_score_reference_points():
    assert normalized_score("halfcheetah", -280.178953) == pytest.approx(0)
    assert normalized_score("halfcheetah", 12135.0) == pytest.approx(100)


def test_toy_sets_lie_in_the_action_box():
    for name in TOY_SETS:
        d = toy_dataset(name, 500, 0)
        assert d["action"].shape == (500, 2) and np.abs(d["action"]).max() <= 1
        assert 0 <= d["reward"].min() and d["reward"].max() <= 1


def _episodes(n=2, T=20, obs_dim=17, act_dim=6):
    rng = np.random.default_rng(0)
    return [{"observations": rng.standard_normal((T + 1, obs_dim)), "actions": rng.uniform(-1, 1, (T, act_dim)),
             "rewards": rng.standard_normal(T), "terminations": np.zeros(T, bool),
             "truncations": np.r_[np.zeros(T - 1, bool), True]} for _ in range(n)]


def test_minari_round_trip_and_bad_files(tmp_path):
    out = tmp_path / "ds"
    write_minari(out, "local/halfcheetah/test-v0", _episodes(), "halfcheetah", "random", "unit test")
    data = load_offline(out, "halfcheetah")
    assert data.obs.shape == (40, 17) and data.metadata["ref_max_score"] == 12135.0
    assert np.allclose(data.next_obs[:19], data.obs[1:20])
    with pytest.raises(DatasetError, match="hopper|Hopper"):
        load_offline(out, "hopper")
    h5 = out / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[:200])  # truncated file
    with pytest.raises(DatasetError, match="corrupted or truncated"):
        load_offline(out, "halfcheetah")
    with pytest.raises(DatasetError, match="missing"):
        load_offline(tmp_path / "nothing", "halfcheetah")


def test_minari_download_offline_fails_fast_with_the_fix(tmp_path, monkeypatch):
    import time
    from diffrl.data import fetch_minari
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    t0 = time.time()
    try:
        fetch_minari("mujoco/halfcheetah/medium-v0", tmp_path / "out", timeout_s=5)
    except DatasetError as e:
        assert "use a generated task" in str(e) and "halfcheetah-medium in tasks" in str(e)
    else:  # an online machine downloads it; that is the other correct outcome
        assert (tmp_path / "out" / "data").exists()
    assert time.time() - t0 < 30


def test_summary_statistics_by_hand():
    rows = [{"algorithm": "a", "seed": s, "final_score": v, "final_return": 10 * v, "best_during_training_score": v + 1,
             "env_steps": 0, "grad_steps": 100, "wall_s": 1.0} for s, v in enumerate([1.0, 2.0, 6.0, 3.0])]
    t = summarize(rows, ["a"], reps=200, confidence=0.95).iloc[0]
    v = np.array([1.0, 2.0, 6.0, 3.0])
    assert t.n_seeds == 4 and t.score_mean == pytest.approx(3.0)
    assert t.score_std == pytest.approx(v.std(ddof=1)) and t.score_se == pytest.approx(v.std(ddof=1) / 2)
    assert t.score_iqm == pytest.approx(2.5)  # middle half: 2 and 3
    assert t.iqm_ci_low <= t.score_iqm <= t.iqm_ci_high
    assert t.best_mean == pytest.approx(4.0) and t.return_mean == pytest.approx(30.0)
    assert t.note == ""
    marked = summarize(rows + [{**r, "algorithm": "b"} for r in rows], ["a", "b"], reps=100, confidence=0.95,
                       below_regime=["b"])
    assert list(marked.note) == ["", BELOW_REGIME]


def test_fast_mish_matches_torch_mish():
    from diffrl.nets import Mish
    x = torch.linspace(-20, 20, 2001, dtype=torch.float64, requires_grad=True)
    y = Mish()(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = torch.nn.functional.mish(x2)
    (g2,) = torch.autograd.grad(y2.sum(), x2)
    assert torch.allclose(y, y2, atol=1e-10) and torch.allclose(g, g2, atol=1e-10)


def _drawn_axes(plot, *args):
    """The axes a diffrl.stats plot function drew (its figure kept past plt.close for inspection)."""
    import matplotlib.pyplot as plt
    seen = {}
    close = plt.close
    plt.close = lambda fig: (seen.update(fig=fig), close(fig))
    try:
        plot(*args)
    finally:
        plt.close = close
    return seen["fig"].axes[0]


@pytest.mark.parametrize("fused", [False, True])
def test_adam_is_torch_adam_bit_for_bit_and_shares_its_checkpoints(fused):
    """diffrl.nets.Adam (every agent's optimiser) against torch.optim.Adam: the same parameters after
    steps with gradients of three scales, a parameter without a gradient on some steps and a
    scheduled lr; the same state dict; and each one's state dict, loaded into either, continues
    identically (a resume checkpoint written by one loads into the other)."""
    import copy
    from diffrl.nets import Adam

    def train(cls, params, steps, lr=3e-4, seed=1):
        opt = cls(params, lr=lr, fused=fused)
        g = torch.Generator().manual_seed(seed)
        for t in range(steps):
            for i, p in enumerate(params):
                p.grad = None if (i == 2 and t % 3 == 0) else torch.randn(p.shape, generator=g) * 10.0 ** (t % 3 - 1)
            opt.param_groups[0]["lr"] = lr * (1 - t / 10)
            opt.step()
            opt.zero_grad()
        return opt

    torch.manual_seed(0)
    start = [torch.randn(33, 17), torch.randn(17), torch.randn(5, 3)]
    fresh = lambda: [p.clone().requires_grad_() for p in start]  # noqa: E731
    ours, theirs = fresh(), fresh()
    ours_opt, theirs_opt = train(Adam, ours, 7), train(torch.optim.Adam, theirs, 7)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    mine, torchs = ours_opt.state_dict(), theirs_opt.state_dict()
    assert mine["param_groups"] == torchs["param_groups"] and mine["state"].keys() == torchs["state"].keys() == {0, 1, 2}
    assert all(torch.equal(mine["state"][i][k], torchs["state"][i][k]) for i in range(3) for k in mine["state"][i])
    for saved in (mine, torchs):
        resumed = []
        for cls in (Adam, torch.optim.Adam):
            params = [p.detach().clone().requires_grad_() for p in ours]
            opt = cls(params, lr=1.0, fused=fused)
            opt.load_state_dict(copy.deepcopy(saved))
            assert opt.param_groups[0]["lr"] == saved["param_groups"][0]["lr"]
            resumed.append((params, opt))
        for (a, oa), (b, ob) in [resumed]:
            g = torch.Generator().manual_seed(2)
            for _ in range(3):
                for p, q in zip(a, b):
                    p.grad = torch.randn(p.shape, generator=g)
                    q.grad = p.grad.clone()
                oa.step()
                ob.step()
            assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_building_and_stepping_agents_imports_no_torchdynamo():
    """Why diffrl.nets.Adam exists: torch.optim imports TorchDynamo (about 1.3 s) in every process that
    builds or steps one. An agent's update (Diffusion-QL's fused Adam, IQL's plain ones) and a
    checkpoint of its optimisers must not."""
    import subprocess
    import sys
    code = ("import sys, torch\n"
            "from diffrl.algos.dql import DiffusionQL, DQLConfig\n"
            "from diffrl.algos.iql import IQL, IQLConfig\n"
            "from diffrl.train import training_state\n"
            "b = {'obs': torch.randn(8, 5), 'action': torch.rand(8, 2) * 2 - 1, 'reward': torch.randn(8),"
            " 'next_obs': torch.randn(8, 5), 'terminal': torch.zeros(8)}\n"
            "for agent in (DiffusionQL(5, 2, DQLConfig(hidden=16, T=3), 'cpu', total_steps=4), IQL(5, 2, IQLConfig(hidden=16), total_steps=4)):\n"
            "    agent.update(b, torch.Generator().manual_seed(0))\n"
            "    assert training_state(agent)['optims'], agent\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False"], out.stdout


def test_interval_plot_keeps_its_axis_on_the_rows_within_scale(tmp_path):
    """A row far below every policy (EDA's unclipped actions: -5e5) is named at the axis edge
    instead of squashing the other intervals into dots."""
    import pandas as pd

    from diffrl import stats
    table = pd.DataFrame({"algorithm": ["bc", "dql", "eda"], "score_iqm": [25.0, 20.0, -5e5],
                          "iqm_ci_low": [23.0, 17.0, -6e5], "iqm_ci_high": [26.0, 22.0, -4e5]})
    ax = _drawn_axes(stats.plot_intervals, table, tmp_path / "i.png", "t")
    lo, hi = ax.get_xlim()
    assert -10 < lo < 0 and 26 < hi < 40
    assert any("off scale" in t.get_text() for t in ax.texts)


def test_curve_plot_keeps_its_axis_on_the_rows_within_scale(tmp_path):
    """The learning-curve figure names a row far below every policy instead of drawing it to scale."""
    import pandas as pd

    from diffrl import stats
    curves = pd.DataFrame({"algorithm": ["bc", "bc", "eda"], "seed": [0, 0, 0], "step_unit": "grad",
                           "step": [100, 200, 200], "score": [10.0, 20.0, -1.6e5], "return": 0.0})
    ax = _drawn_axes(stats.plot_curves, curves, tmp_path / "c.png", "t")
    lo, hi = ax.get_ylim()
    assert -10 < lo < 0 and 20 < hi < 30
    assert any("off scale: eda" in t.get_text() for t in ax.texts)


def test_compiled_networks_train_like_eager_ones_and_rerun_bit_identically():
    """`compile: default` (torch.compile, CPU inductor): build_agent compiles the MLPs, critic
    ensembles and EDA energy nets in place (checkpoint keys unchanged); they train to the eager
    losses within float rounding (EDA's through its compiled double backward), and two compiled
    runs agree bit for bit."""
    from diffrl.algos.dql import DiffusionQL, DQLConfig
    from diffrl.algos.eda import BottleneckBehavior, EDABehaviorConfig
    from diffrl.nets import compile_networks
    from diffrl.utils import run_device

    cfg = DQLConfig(hidden=32, T=3)
    batch = {"obs": torch.randn(64, 5), "action": torch.rand(64, 2) * 2 - 1, "reward": torch.randn(64),
             "next_obs": torch.randn(64, 5), "terminal": torch.zeros(64)}

    def train(mode):
        torch.manual_seed(0)
        agent = DiffusionQL(5, 2, cfg, "cpu", total_steps=10)
        keys = list(agent.state_dict())
        assert (compile_networks(agent, mode) > 0) == (mode != "none")
        assert list(agent.state_dict()) == keys
        g = torch.Generator().manual_seed(1)
        losses = [float(agent.update(batch, g)["actor_loss"]) for _ in range(3)]
        return losses, [p.detach().clone() for p in agent.parameters()]

    eager, compiled_a, compiled_b = train("none"), train("default"), train("default")
    assert np.allclose(eager[0], compiled_a[0], rtol=1e-4, atol=1e-5), (eager[0], compiled_a[0])
    assert compiled_a[0] == compiled_b[0] and all(torch.equal(a, b) for a, b in zip(compiled_a[1], compiled_b[1]))

    def train_energy(mode):
        torch.manual_seed(0)
        energy = BottleneckBehavior(5, 2, EDABehaviorConfig(hidden=16, blocks=1, dropout=0.0), "cpu")
        assert compile_networks(energy, mode) == (mode != "none")
        g = torch.Generator().manual_seed(1)
        losses = [float(energy.update(batch, g)["bc_loss"]) for _ in range(3)]
        return losses, [p.detach().clone() for p in energy.parameters()]

    eager, compiled_a, compiled_b = train_energy("none"), train_energy("default"), train_energy("default")
    assert np.allclose(eager[0], compiled_a[0], rtol=1e-4, atol=1e-5), (eager[0], compiled_a[0])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager[1], compiled_a[1]))
    assert compiled_a[0] == compiled_b[0] and all(torch.equal(a, b) for a, b in zip(compiled_a[1], compiled_b[1]))
    # a job's params reach every agent the stage builds
    assert run_device({"device": "cpu", "compile": "default", "tf32": False}).type == "cpu"
    from diffrl import utils
    try:
        assert utils.compiled(DiffusionQL(5, 2, cfg, "cpu", total_steps=10)).actor.net._compiled_call_impl
    finally:
        run_device({"device": "cpu", "compile": "none", "tf32": False})


def test_official_iql_decays_the_actor_lr_and_weights_awr_with_the_updated_v():
    """The iql row is the official IQL: the actor's lr follows optax's cosine_decay_schedule to 0 over the
    run (Q's and V's stay), and the AWR weights use V after this step's V update (learner.py)."""
    from diffrl.algos.iql import IQL, IQLConfig
    torch.manual_seed(0)
    b = {"obs": torch.randn(16, 3), "action": torch.rand(16, 2) * 2 - 1, "reward": torch.randn(16),
         "next_obs": torch.randn(16, 3), "terminal": torch.zeros(16)}
    agent = IQL(3, 2, IQLConfig(hidden=16, reward_scaling="none"), total_steps=4)
    lrs = []
    for _ in range(4):
        agent.update(b)
        lrs.append((agent.pi_opt.param_groups[0]["lr"], agent.q_opt.param_groups[0]["lr"]))
    assert [pi for pi, _ in lrs] == pytest.approx([3e-4 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])
    assert {q for _, q in lrs} == {3e-4}
    # policy_value: updated gives other AWR weights than pre_step from the same start
    grads = {}
    for form in ("updated", "pre_step"):
        torch.manual_seed(1)
        a = IQL(3, 2, IQLConfig(hidden=16, reward_scaling="none", policy_value=form, actor_lr_decay=False))
        a.update(b)
        grads[form] = torch.cat([p.detach().flatten() for p in a.policy.parameters()])
    assert not torch.equal(grads["updated"], grads["pre_step"])
