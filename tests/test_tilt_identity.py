"""A tilted row's tilt is the only difference from its base row (diffrl/algos/tilted.py, `sampler` and
`selection`): at tfg_lambda 0, no MALA and one particle, with `sampler: base` and `selection: base`,
bc_tilt, dql_tilt, dtql_tilt and eda_tilt act exactly as their base rows' own `act`, generator draw for
generator draw, so the evaluation (diffrl.train.policy_fn + diffrl.envs.evaluate, as stages/evaluate.py
runs it) returns bit-identical per-episode returns and the probability of improvement measures the
tilt alone. Tiny untrained agents; every net the base row does NOT evaluate (EMA copies, online
critics) is perturbed, so drawing from or ranking with the wrong one would show."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from diffrl.algos.bc import BCConfig, DiffusionBC
from diffrl.algos.dql import DiffusionQL, DQLConfig
from diffrl.algos.dtql import DTQL, DTQLBehaviorConfig, DTQLConfig
from diffrl.algos.eda import EDAAlign, EDABehaviorConfig, EDAConfig
from diffrl.algos.iql import IQL, IQLConfig
from diffrl.algos.tilted import TiltRowConfig, tilted_policy
from diffrl.envs import evaluate
from diffrl.fields import ConfigError
from diffrl.train import policy_fn

OBS, ACT = 17, 6  # HalfCheetah-v5
IDENTITY = TiltRowConfig(tfg_lambda=0.0, mala_steps=0, num_particles=1, sampler="base", selection="base")


def _perturb(*modules: torch.nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(scale * torch.randn_like(p))


def _bc():
    bc = DiffusionBC(OBS, ACT, BCConfig(hidden=16, layers=1))
    _perturb(bc.eps_ema)
    return bc.eval(), IQL(OBS, ACT, IQLConfig(hidden=16, layers=1)).eval()


def _dql(**kw):
    dql = DiffusionQL(OBS, ACT, DQLConfig(hidden=16, layers=1, eval_temperature=0.5, **kw), total_steps=10)
    _perturb(dql.actor_ema, dql.critic)  # evaluated: the online actor and the target critic
    _perturb(dql.critic_target, scale=3.0)  # spread Q so that the softmax choice is not uniform
    return dql.eval(), None


def _dtql(**kw):
    dtql = DTQL.from_configs(OBS, ACT, DTQLConfig(hidden=16, eval_temperature=0.5, **kw),
                             DTQLBehaviorConfig(hidden=16, layers=2), IQLConfig(hidden=16, layers=1))
    _perturb(dtql.critic.q)
    _perturb(dtql.critic.q_target, scale=3.0)
    return dtql.eval(), None


def _eda(**kw):
    eda = EDAAlign.from_configs(OBS, ACT, EDAConfig(**kw), EDABehaviorConfig(hidden=16, blocks=1, sample_steps=5),
                                IQLConfig(hidden=16, layers=1))
    _perturb(eda.pi)  # the aligned policy differs from the behaviour model
    _perturb(eda.critic.q)
    return eda.eval(), None


BUILD = {"bc_tilt": _bc, "dql_tilt": _dql, "dtql_tilt": _dtql, "eda_tilt": _eda}


def _agents(row: str, **kw):
    torch.manual_seed(0)
    return BUILD[row](**kw)


@pytest.mark.parametrize("row", list(BUILD))
def test_identity_tilt_reproduces_the_base_rows_evaluation_returns(row):
    """The evaluate stage's path: policy_fn (a generator seeded with the episode seed) and evaluate on
    the same episodes; the per-episode returns are bit-identical."""
    agent, critic_agent = _agents(row)
    policy = tilted_policy(row, IDENTITY, agent, critic_agent)
    seed = 1_000_000
    base = evaluate(policy_fn(agent, seed), "halfcheetah", 2, seed, 20)
    tilted = evaluate(policy_fn(policy, seed), "halfcheetah", 2, seed, 20)
    assert np.array_equal(base, tilted), (row, base, tilted)


@pytest.mark.parametrize("row,kw", [("bc_tilt", {}), ("dql_tilt", {}), ("dql_tilt", {"sampler": "dpm"}),
                                    ("dql_tilt", {"eval_ema": True}), ("dql_tilt", {"variant": "bc"}),
                                    ("dtql_tilt", {"eval_chunk": 2048}),  # 2 states per chunk of 1024 candidates
                                    ("eda_tilt", {"q_agg": "mean", "eval_samples": 3})])
def test_identity_tilt_acts_as_the_base_row(row, kw):
    """Actions over a batch of states with identically seeded generators, for the base rows' options
    that change their action path (sampler, evaluated network, candidates, chunks, Q aggregate)."""
    agent, critic_agent = _agents(row, **kw)
    obs = np.random.default_rng(0).standard_normal((5, OBS)).astype(np.float32)
    policy = tilted_policy(row, IDENTITY, agent, critic_agent)
    for seed in (1, 2):
        base = agent.act(obs, generator=torch.Generator().manual_seed(seed))
        assert np.array_equal(policy.act(obs, generator=torch.Generator().manual_seed(seed)), base), (row, kw, seed)


def test_the_keys_are_what_makes_the_identity():
    """Without them the rows differ from their base where the leftover said: dql_tilt takes one sample
    (no softmax over 50), eda_tilt and dtql_tilt sample another model or on other levels (and either key
    alone leaves one of the two differences). A ddpm Diffusion-QL's own sampler is the tilt's chain, so
    dql_tilt needs selection: base alone."""
    obs = np.random.default_rng(0).standard_normal((5, OBS)).astype(np.float32)
    none = TiltRowConfig(tfg_lambda=0.0, num_particles=1, sampler="tilt", selection="tilt")  # the earlier form
    one_key = [(replace(none, selection="base"), False), (replace(none, sampler="base"), False)]
    cases = {"dql_tilt": [(none, False), (replace(none, selection="base"), True)],
             "dtql_tilt": [(none, False), *one_key], "eda_tilt": [(none, False), *one_key]}
    for row, settings in cases.items():
        agent, critic_agent = _agents(row)
        base = agent.act(obs, generator=torch.Generator().manual_seed(1))
        for cfg, same in settings:
            a = tilted_policy(row, cfg, agent, critic_agent).act(obs, generator=torch.Generator().manual_seed(1))
            assert a.shape == base.shape and np.array_equal(a, base) == same, (row, cfg.sampler, cfg.selection)


@pytest.mark.parametrize("row", list(BUILD))
def test_with_the_base_sampler_and_selection_the_particles_tilt(row):
    """The tilt on (four particles, one kept by the tilt's critic) over the base row's own sampler and
    choice: finite actions (EDA's own sampler clips nothing), different from the base row's."""
    agent, critic_agent = _agents(row)
    obs = np.random.default_rng(0).standard_normal((3, OBS)).astype(np.float32)
    policy = tilted_policy(row, replace(IDENTITY, num_particles=4), agent, critic_agent)
    a = policy.act(obs, generator=torch.Generator().manual_seed(1))
    base = agent.act(obs, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, ACT) and np.isfinite(a).all() and not np.array_equal(a, base)


def test_guidance_on_a_base_sampler_without_a_ddpm_chain_says_why():
    agent, _ = _agents("eda_tilt")
    with pytest.raises(ConfigError) as err:
        tilted_policy("eda_tilt", replace(IDENTITY, tfg_lambda=4.0), agent)
    line = str(err.value)
    assert "\n" not in line and line.startswith("eda_tilt.tfg_lambda=4 is unavailable with eda_tilt.sampler: base")
    agent, _ = _agents("dql_tilt")  # a ddpm Diffusion-QL row's own sampler is the chain: guidance works
    a = tilted_policy("dql_tilt", replace(IDENTITY, tfg_lambda=4.0), agent).act(
        np.zeros((2, OBS), np.float32), generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, ACT)
