"""Inference-time tilts (diffrl.algos.tilts) and the tilted evaluation rows (diffrl.algos.tilted):
the online agent's seeded samples match the recorded ones bit for bit; on a toy critic the tilts
raise the value of samples drawn from the same noise; with no tilt the tilted sampler is the
policy's own; the offline policies' parts (EDA's energy levels, DTQL's EDM levels) are their
models; MALA says why it is unavailable without an energy; the table puts a tilted row next to its
base; and a change of a tilt reruns only its evaluations and the tables, in both front ends."""
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffrl import config
from diffrl.algos.bc import BCConfig, DiffusionBC
from diffrl.algos.dpmd import DiffusionOnline, OnlineConfig
from diffrl.algos.dql import DiffusionQL, DQLConfig
from diffrl.algos.iql import IQL, IQLConfig
from diffrl.algos.tilted import TiltRowConfig, tilted_policy
from diffrl.algos.tilts import EnergyGradNet, TiltConfig, TiltedPolicy
from diffrl.diffusion import DiffusionSchedule
from diffrl.fields import ConfigError
from diffrl.utils import cpu_name

from conftest import run
from test_pipeline_graph import _make_outputs, job_stats, snakemake_dry_run

GOLDEN = Path(__file__).resolve().parent / "data" / "online_tilt_samples.pt"


pytestmark = pytest.mark.usefixtures("one_thread")  # the recorded samples were computed on one thread


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
        # recorded with the shared time embedding; the tilt code path is what this checks
        agent = DiffusionOnline(3, 2, replace(OnlineConfig(), alg="dpmd", hidden=16, layers=1, T=3,
                                              time_embedding="shared", **over))
        gen = torch.Generator().manual_seed(1)
        out[f"{name}/act"] = agent.sample_actions(obs, gen, deterministic=False)
        out[f"{name}/eval"] = agent.sample_actions(obs, gen, deterministic=True)
        for _ in range(2):
            agent.update(batch, gen)
        out[f"{name}/weights"] = torch.cat([p.detach().flatten() for p in agent.parameters()])
    return {"samples": out, "platform": _platform()}


def _platform() -> str:
    # the CPU model too: an AMD EPYC and an Intel Xeon, both AVX512, round these samples differently
    return (f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {platform.machine()}, "
            f"{cpu_name()}")


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


# --------------------------------------------------------------------------- the tilts on a toy critic
class ToyCritic(torch.nn.Module):
    """Two Q heads, -||a - c_i||^2 with c_1, c_2 near (0.6, -0.4): known gradients, highest near the corner."""

    def forward(self, obs, a):
        centres = torch.tensor([[0.6, -0.4], [0.5, -0.5]])
        return -(a.unsqueeze(0) - centres[:, None]).pow(2).sum(-1)


def _toy_policy(energy: bool = False, **tilt) -> TiltedPolicy:
    """An untrained noise net (or energy net) on a 5-level VP schedule, valued by ToyCritic."""
    torch.manual_seed(0)
    net = EnergyGradNet(3, 2, 32, 2) if energy else DiffusionBC(3, 2, BCConfig(hidden=32, layers=2)).eps
    return TiltedPolicy(net.eval(), DiffusionSchedule.make("vp", 5), ToyCritic(), TiltConfig(**tilt), 2)


def _mean_q(policy: TiltedPolicy, n: int = 256) -> float:
    obs = torch.randn(n, 3, generator=torch.Generator().manual_seed(2))
    a = policy.sample(obs, torch.Generator().manual_seed(3))  # the same noise for every tilt
    with torch.no_grad():
        return float(policy.tilt_value(obs, a).mean())


@pytest.mark.parametrize("energy", [False, True])
def test_tilted_samples_have_higher_mean_q_than_untilted_ones_from_the_same_noise(energy):
    untilted = _mean_q(_toy_policy(energy))
    tilts = [dict(tfg_lambda=2.0), dict(tfg_lambda=2.0, guidance_schedule="linear", guidance_recurrence=2),
             dict(num_particles=8), dict(num_particles=8, particle_selection_lambda=5.0, q_agg="mean")]
    if energy:
        tilts += [dict(tfg_lambda=2.0, mala_steps=2), dict(tfg_lambda=2.0, mala_steps=2, mala_sigma_energy=True)]
    for tilt in tilts:
        tilted = _mean_q(_toy_policy(energy, **tilt))
        assert tilted > untilted + 0.05, (tilt, untilted, tilted)


def test_no_tilt_and_one_particle_is_the_policys_own_sampler():
    """tfg_lambda 0, no MALA, one particle: the tilted sampler draws exactly the base policy's
    samples (bc, Diffusion-QL, and the online agent's untilted sampler); with Diffusion-QL's 50
    particles drawn ~ softmax(Q) it is Diffusion-QL's own evaluation action."""
    torch.manual_seed(0)
    obs = torch.randn(6, 3)
    bc = DiffusionBC(3, 2, BCConfig(hidden=16, layers=1)).eval()
    iql = IQL(3, 2, IQLConfig(hidden=16, layers=1))
    none = TiltRowConfig(tfg_lambda=0.0, num_particles=1, sampler="tilt", selection="tilt")  # the DDPM tilt chain
    assert torch.equal(tilted_policy("bc_tilt", none, bc, iql).sample(obs, torch.Generator().manual_seed(1)),
                       bc.sample(obs, torch.Generator().manual_seed(1)))
    dql = DiffusionQL(3, 2, DQLConfig(hidden=16, layers=1), total_steps=10).eval()
    assert torch.equal(tilted_policy("dql_tilt", none, dql).sample(obs, torch.Generator().manual_seed(1)),
                       dql.sample(obs, torch.Generator().manual_seed(1)))
    softmax = replace(none, num_particles=dql.cfg.eval_candidates,
                      particle_selection_lambda=1 / dql.cfg.eval_temperature)
    policy = tilted_policy("dql_tilt", softmax, dql)
    assert np.array_equal(policy.act(obs.numpy(), torch.Generator().manual_seed(4)),
                          dql.act(obs.numpy(), torch.Generator().manual_seed(4)))
    torch.manual_seed(0)
    online = DiffusionOnline(3, 2, replace(OnlineConfig(), hidden=16, layers=1, T=3))
    assert torch.equal(online.denoise(obs, torch.Generator().manual_seed(1)),
                       online.schedule.sample(online.actor_ema, obs, 2, torch.Generator().manual_seed(1),
                                              online.cfg.init_scale))


def test_mala_without_an_energy_says_why_it_is_unavailable():
    bc = DiffusionBC(3, 2, BCConfig(hidden=16, layers=1))
    with pytest.raises(ConfigError) as err:
        tilted_policy("bc_tilt", TiltRowConfig(mala_steps=2), bc, IQL(3, 2, IQLConfig(hidden=16, layers=1)))
    line = str(err.value)
    assert "\n" not in line and line.startswith("bc_tilt.mala_steps=2 is unavailable: MALA needs an energy")
    assert line.endswith("set bc_tilt.mala_steps: 0")


def test_eda_and_dtql_levels_are_their_models():
    """EDA: level k's noise prediction is EDA's -sigma grad f at t_k, abar_k = alpha(t_k)^2, and the
    energy's gradient is that prediction; DTQL: the level's x0 prediction is the EDM denoiser's."""
    from diffrl.algos.dtql import DTQL, DTQLBehaviorConfig, DTQLConfig
    from diffrl.algos.eda import EDAAlign, EDABehaviorConfig, EDAConfig, energy_eps
    from diffrl.algos.tilted import EDMLevels, VPSDELevels
    torch.manual_seed(0)
    obs, x = torch.randn(4, 3), torch.randn(4, 2)
    eda = EDAAlign.from_configs(3, 2, EDAConfig(), EDABehaviorConfig(hidden=16, blocks=1),
                                IQLConfig(hidden=16, layers=1)).eval()
    levels = VPSDELevels(eda.pi, eda.behavior.sde, 1e-3, 6)
    k = torch.tensor([0, 2, 4, 5])
    t = levels.times[k]
    alpha, sigma = eda.behavior.sde.alpha_sigma(t)
    assert torch.allclose(levels.schedule.abar[k], alpha.pow(2), rtol=1e-5)
    assert torch.allclose(levels(x, k, obs), energy_eps(eda.pi, x, t, obs, sigma), atol=1e-6)
    dtql = DTQL.from_configs(3, 2, DTQLConfig(hidden=16), DTQLBehaviorConfig(hidden=16, layers=2),
                             IQLConfig(hidden=16, layers=1)).eval()
    edm = EDMLevels(dtql.behavior, 8)
    sch, k = edm.schedule, torch.tensor([0, 3, 6, 7])
    with torch.no_grad():
        x0 = sch.predict_x0(x, k, edm(x, k, obs))
        assert torch.allclose(x0, dtql.behavior.denoise(x / sch.sqrt_abar[k, None], edm.sigmas[k], obs), atol=1e-5)


def test_the_table_puts_a_tilted_row_next_to_its_base_with_its_probability_of_improvement():
    from diffrl.stats import summarize, table_order
    bases = {"bc_tilt": "bc", "dql_tilt": "dql"}
    order = table_order(["bc", "iql", "dql", "dql_tilt", "bc_tilt"], bases)
    assert order == ["bc", "bc_tilt", "iql", "dql", "dql_tilt"]
    runs = [{"algorithm": a, "final_score": s, "best_during_training_score": s, "final_return": s, "env_steps": 0,
             "grad_steps": 1, "wall_s": 1.0} for a, scores in (("bc", [1, 2, 3]), ("bc_tilt", [4, 5, 6]))
            for s in scores]
    table = summarize(runs, ["bc", "bc_tilt"], 200, 0.95, below_regime=["bc"], bases={"bc_tilt": "bc"})
    rows = table.set_index("algorithm")
    assert rows.loc["bc_tilt", "base_row"] == "bc" and rows.loc["bc_tilt", "poi_vs_base"] == 1.0
    assert np.isnan(rows.loc["bc", "poi_vs_base"]) and rows.loc["bc_tilt", "note"] == rows.loc["bc", "note"] != ""


# --------------------------------------------------------------------------- invalidation, both front ends
@pytest.mark.pipeline
def test_a_tilt_change_reruns_only_its_evaluations_and_the_tables(project, monkeypatch):
    """Stand-in outputs of a graph with tilted rows, recorded by `snakemake --touch` and `dvc commit`:
    a tilted row's tfg_lambda or particles rerun its evaluations and the table, never a training
    job; editing the tilted rows' module reruns the tilted evaluations only."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(seeds=[0], algorithms=["bc", "iql", "dql", "bc_tilt", "dql_tilt"], toy_sets=["8gaussians"],
                  bandit_sets=["8gaussians"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "diffrl.params", "--regenerate"], project)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    # bc_tilt loads the bc and iql runs and reads its own section; it trains nothing
    loads = {"runs/${item.task}/bc/seed${item.seed}", "runs/${item.task}/iql/seed${item.seed}"}
    code = {"diffrl/algos/tilted.py", "diffrl/algos/bc.py", "diffrl/algos/iql.py"}
    assert loads | code <= set(stages["evaluate_bc_tilt"]["deps"])
    assert "bc_tilt" in stages["evaluate_bc_tilt"]["params"] and "offline_train_bc_tilt" not in stages
    now = time.time()
    _make_outputs(project, config.load(project / "params.yaml"), mtime=now - 1000)
    for f in [*(project / "stages").glob("*.py"), *(project / "diffrl").rglob("*.py")]:
        os.utime(f, (now - 500, now - 500))
    target = "results/halfcheetah-medium_summary.csv"
    run(["snakemake", "--cores", "1", "--touch", "--nolock", target], project)
    run(["dvc", "commit", "-f", "-q"], project)

    # Snakemake
    for change, row in (("bc_tilt={tfg_lambda: 64}", "bc_tilt"), ("dql_tilt={num_particles: 4}", "dql_tilt")):
        out = snakemake_dry_run(project, target, "--config", change)
        assert job_stats(out) == {"evaluate": 1, "summary": 1}, (change, out[-2000:])
        assert f"algo={row}, seed=0" in out
    tilted_py = project / "diffrl/algos/tilted.py"
    text = tilted_py.read_text()
    tilted_py.write_text(text + "\n# an edit\n")
    assert job_stats(snakemake_dry_run(project, target)) == {"evaluate": 2, "summary": 1}
    tilted_py.write_text(text)

    # DVC: `dvc status` lists the evaluation whose tilt changed (`dvc repro` reruns the table after it)
    monkeypatch.chdir(project)
    params["bc_tilt"]["tfg_lambda"] = 64.0
    params["dql_tilt"]["num_particles"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = set(json.loads(run(["dvc", "status", "--json"], project).stdout)) - {"plan"}
    assert status == {"evaluate_bc_tilt@halfcheetah-medium-0", "evaluate_dql_tilt@halfcheetah-medium-0"}, status


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    # PYTHONPATH=. python tests/test_tilts.py record: rewrite the fixture, only when a change to the
    # sampler's numbers is intended
    torch.set_num_threads(1)
    torch.save(online_samples(), GOLDEN)
