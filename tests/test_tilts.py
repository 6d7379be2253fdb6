"""Inference-time tilts (diffrl.algos.tilts): the online agent's seeded samples match the recorded
ones bit for bit."""
import platform
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffrl.algos.dpmd import DiffusionOnline, OnlineConfig

GOLDEN = Path(__file__).resolve().parent / "data" / "online_tilt_samples.pt"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- the online rows' numbers
# One tiny agent per tilt the online rows use; each acts (training and evaluation actions) and takes
# two updates (the second a policy step) from fixed seeds.
ONLINE_CASES = {
    "plain": dict(num_particles=4),
    "guided": dict(num_particles=3, tfg_lambda=2.0, guidance_schedule="linear", guidance_recurrence=2,
                   per_sample_guidance=False),
    "mala": dict(num_particles=3, tfg_lambda=2.0, mala_steps=2),
    "mala_pooled": dict(num_particles=2, tfg_lambda=1.0, mala_steps=1, mala_adaptation="pooled",
                        mala_sigma_energy=True),
    "soft_select": dict(num_particles=5, particle_selection_lambda=3.0, q_critic_agg="mean", tfg_lambda=1.0,
                        eval_tilt=True),
    "model": dict(num_particles=2, tilt="model", tfg_lambda=1.0, model_hidden=8, model_layers=1, model_ensemble=2),
    "plan": dict(num_particles=2, plan_horizon=2, tfg_lambda=0.5, model_hidden=8, model_layers=1, model_ensemble=2),
}


def online_samples() -> dict:
    """Seeded actions and post-update weights of ONLINE_CASES, with the platform that computed them."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(4, 3, generator=g)
    batch = {"obs": torch.randn(6, 3, generator=g), "action": torch.rand(6, 2, generator=g) * 2 - 1,
             "reward": torch.randn(6, generator=g), "next_obs": torch.randn(6, 3, generator=g),
             "terminal": torch.zeros(6)}
    out = {}
    for name, over in ONLINE_CASES.items():
        torch.manual_seed(0)
        agent = DiffusionOnline(3, 2, replace(OnlineConfig(), alg="dpmd", hidden=16, layers=1, T=3, **over))
        gen = torch.Generator().manual_seed(1)
        out[f"{name}/act"] = agent.sample_actions(obs, gen, deterministic=False)
        out[f"{name}/eval"] = agent.sample_actions(obs, gen, deterministic=True)
        for _ in range(2):
            agent.update(batch, gen)
        out[f"{name}/weights"] = torch.cat([p.detach().flatten() for p in agent.parameters()])
    return {"samples": out, "platform": _platform()}


def _platform() -> str:
    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {platform.machine()}"


def test_online_samples_match_the_recorded_ones():
    """The online rows sample through the shared tilt implementation with the numbers they had
    before it was shared: bit for bit on the platform that recorded them (tests/data/README.md);
    elsewhere CPU kernels may round differently, so within 1e-5."""
    recorded, now = torch.load(GOLDEN, weights_only=True), online_samples()
    assert recorded["samples"].keys() == now["samples"].keys()
    for key, value in now["samples"].items():
        if recorded["platform"] == now["platform"]:
            assert torch.equal(value, recorded["samples"][key]), key
        else:
            assert torch.allclose(value, recorded["samples"][key], atol=1e-5), key


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    # PYTHONPATH=. python tests/test_tilts.py record: rewrite the fixture, only when a change to the
    # sampler's numbers is intended
    torch.set_num_threads(1)
    torch.save(online_samples(), GOLDEN)
