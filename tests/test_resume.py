"""A training run killed after a checkpoint resumes from it and ends bit-identical on CPU."""
import numpy as np
import pytest
import torch

from diffrl.algos.bc import BCConfig, DiffusionBC
from diffrl.buffer import ReplayBuffer
from diffrl.data import toy_dataset
from diffrl.train import train_offline


class Killed(Exception):
    pass


def _run(resume, steps=40, die_at=None):
    torch.manual_seed(0)
    agent = DiffusionBC(1, 2, BCConfig(hidden=32, ema_start=0))
    if die_at is not None:
        update = agent.update

        def dying(batch, generator=None):
            if int(agent.step) + 1 == die_at:
                raise Killed()
            return update(batch, generator)
        agent.update = dying
    buf = ReplayBuffer.from_arrays(toy_dataset("8gaussians", 500, 0))
    info = train_offline(agent, buf, steps=steps, batch_size=64, seed=3, run_dir=None, env_name=None,
                         eval_every=10, curve_episodes=1, resume_path=resume, checkpoint_every=10)
    return agent, info


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    full, _ = _run(None)
    resume = tmp_path / "resume.pt"
    with pytest.raises(Killed):
        _run(resume, die_at=27)
    assert resume.exists()
    assert torch.load(resume, weights_only=False)["progress"]["step"] == 20
    resumed, info = _run(resume)
    assert info["grad_steps"] == 40
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


class DieAtUpdate:
    """A RunLog stand-in that kills the run at one update."""

    def __init__(self, step):
        self.step = step

    def log(self, step, metrics):
        if step == self.step:
            raise Killed()

    def log_eval(self, *a):
        pass


def _sac(resume=None, die_at=None):
    from diffrl.algos.sac import SACOnlineConfig
    from diffrl.generate import DataRecorder
    from diffrl.online import make_online_agent
    from diffrl.train import train_online
    cfg = SACOnlineConfig(hidden=32, batch_size=64, num_envs=1, warmup=200)
    # any score reaches the medium score: the medium policy is kept at the first evaluation (env step
    # 350), before the step-500 checkpoint, so the resumed run must restore it from there
    recorder = DataRecorder(medium_score=-1e9, stop_at_medium=False)
    agent, info = train_online(make_online_agent(cfg, "pendulum", 1), "pendulum", cfg, steps=700, seed=1,
                               eval_every=350, eval_episodes=1,
                               log=DieAtUpdate(die_at) if die_at else None, resume_path=resume,
                               checkpoint_every=250, observer=recorder)
    return agent, {k: v for k, v in info.items() if k != "wall_s"}, recorder.medium


def test_sac_resumes_bit_identically(tmp_path, one_thread):
    """The SAC baseline and data agent in the online loop: killed at env step 620, resumed from its
    step-500 checkpoint (buffer, env, RNG states, the data recorder's medium policy kept at step 350
    with its training episodes), it ends where an uninterrupted run ends, with the same medium snapshot."""
    full, info, medium = _sac()
    path = tmp_path / "sac.pt"
    with pytest.raises(Killed):
        _sac(path, die_at=620 - 199)  # updates start at env step 200
    assert torch.load(path, weights_only=False)["progress"]["env_steps"] == 500
    resumed, info2, medium2 = _sac(path)
    assert info2 == info and medium is not None
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # the medium snapshot: the step-350 policy and the one episode (200 steps) finished by then
    assert medium["env_steps"] == medium2["env_steps"] == 350 and medium2["score"] == medium["score"]
    assert medium["state"].keys() == medium2["state"].keys()
    assert all(torch.equal(medium["state"][k], medium2["state"][k]) for k in medium["state"])
    assert not all(torch.equal(medium["state"][k], v) for k, v in full.state_dict().items())  # a copy, not the final
    assert len(medium["episodes"]) == len(medium2["episodes"]) == 1
    for a, b in zip(medium["episodes"], medium2["episodes"]):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # the recorded episode is the training episode the env produced: replaying its actions from the
    # env's first reset gives back its observations and rewards
    from diffrl.envs import make_env, train_env_seed
    ep, env = medium["episodes"][0], make_env("pendulum")
    assert ep["observations"].shape == (201, 3) and ep["actions"].shape == (200, 1) and ep["truncations"][-1]
    obs = env.reset(seed=train_env_seed(1))[0]
    assert np.array_equal(obs, ep["observations"][0])
    for t, a in enumerate(ep["actions"]):
        obs, r, *_ = env.step(a)
        assert np.array_equal(obs, ep["observations"][t + 1]) and r == ep["rewards"][t]
    env.close()
