"""A training run killed after a checkpoint resumes from it and ends bit-identical on CPU."""
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


class DieAtEnvStep:
    """A RunLog stand-in that kills the run at one env step (after that step's update)."""

    def __init__(self, step):
        self.step = step
        self.bar = type("Bar", (), {"update": lambda *a: None})()

    def log(self, step, metrics):
        if step == self.step:
            raise Killed()

    def log_eval(self, *a):
        pass


def _sac(resume=None, die_at=None):
    from diffrl.algos.sac import SACConfig, train_sac
    torch.manual_seed(0)
    cfg = SACConfig(hidden=32, batch_size=64)
    return train_sac("pendulum", cfg, steps=700, warmup=200, eval_every=350, seed=1, eval_episodes=1,
                     record_episodes=True, log=DieAtEnvStep(die_at) if die_at else None, resume_path=resume,
                     checkpoint_every=250)


def test_sac_resumes_bit_identically(tmp_path, one_thread):
    """The SAC baseline and dataset agent: killed at env step 620, resumed from its step-500
    checkpoint (buffer, env, RNG states), it ends where an uninterrupted run ends."""
    full, info, eps = _sac()
    path = tmp_path / "sac.pt"
    with pytest.raises(Killed):
        _sac(path, die_at=620)
    assert torch.load(path, weights_only=False)["progress"]["step"] == 500
    resumed, info2, eps2 = _sac(path)
    assert info2 == info and len(eps2) == len(eps) == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
