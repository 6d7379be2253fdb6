"""A training run killed after a checkpoint resumes from it and ends bit-identical on CPU."""
import pytest
import torch

from diffrl.algos.bc import BCConfig, DiffusionBC
from diffrl.data import ReplayBuffer, toy_dataset
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
    assert torch.load(resume, weights_only=False)["step"] == 20
    resumed, info = _run(resume)
    assert info["grad_steps"] == 40
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
