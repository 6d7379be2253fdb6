"""Dataset metadata: scores are normalised with the dataset's own reference scores (the built-in
D4RL table only where there are none), and generated datasets record who made them, with what,
and from which behaviour agent."""
import dataclasses
import importlib.metadata
import importlib.util
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from diffrl import config
from diffrl.data import load_offline
from diffrl.envs import env_spec, normalized_score, reference_scores

ROOT = Path(__file__).resolve().parents[1]
ENV = "halfcheetah"
TASK = "halfcheetah-medium"  # the runs' task (its dataset here: the other tool's)
REF_MIN, REF_MAX = 0.0, 1000.0  # the other tool's reference scores (not D4RL's -280.18 / 12135)


def _buffers(n=2, T=20):
    from minari.data_collector.episode_buffer import EpisodeBuffer
    rng = np.random.default_rng(0)
    return [EpisodeBuffer(id=i, observations=rng.standard_normal((T + 1, 17)),
                          actions=rng.uniform(-1, 1, (T, 6)).astype(np.float32), rewards=rng.standard_normal(T),
                          terminations=np.zeros(T, bool), truncations=np.r_[np.zeros(T - 1, bool), True])
            for i in range(n)]


@pytest.fixture
def other_dataset(tmp_path, monkeypatch):
    """A HalfCheetah-v5 Minari dataset written by another tool (Minari's own API), with its own
    reference scores."""
    import warnings

    import minari
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("other/halfcheetah/test-v0", _buffers(), env="HalfCheetah-v5",
                                           algorithm_name="other", author="someone else", code_permalink="n/a",
                                           ref_min_score=REF_MIN, ref_max_score=REF_MAX, description="not ours")
    return tmp_path / "minari" / "other" / "halfcheetah" / "test-v0"


def test_scores_are_normalised_with_the_datasets_reference_scores(other_dataset):
    import minari
    meta = load_offline(other_dataset, ENV).metadata
    ref = reference_scores(ENV, meta)
    assert ref == {"ref_min_score": REF_MIN, "ref_max_score": REF_MAX, "source": "dataset"}
    assert normalized_score(ENV, [0.0, 500.0, 1000.0], meta) == pytest.approx([0, 50, 100])
    assert normalized_score(ENV, 500.0, ref) == pytest.approx(50)  # a run's saved copy gives the same
    ds = minari.MinariDataset(str(other_dataset / "data"))
    assert normalized_score(ENV, 700.0, meta) == pytest.approx(100 * minari.get_normalized_score(ds, 700.0))
    # no reference scores (online rows): the built-in D4RL table
    spec = env_spec(ENV)
    for none in (None, {}, {"ref_min_score": 1.0}):
        assert reference_scores(ENV, none) == {"ref_min_score": spec.ref_min, "ref_max_score": spec.ref_max,
                                               "source": "D4RL table"}
    assert normalized_score(ENV, 12135.0) == pytest.approx(100)
    with pytest.raises(ValueError, match="ref_max_score"):
        reference_scores(ENV, {"ref_min_score": 5.0, "ref_max_score": 5.0})


def _evaluate_stage():
    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_offline_run_records_and_uses_its_datasets_reference_scores(other_dataset, tmp_path, monkeypatch):
    from diffrl.offline import train_run
    from diffrl.pipeline import budget_keys, eval_file, run_dir, stage_keys
    from diffrl.tasks import parse

    monkeypatch.chdir(tmp_path)
    params = config.load(ROOT / "params.yaml", ["budget=smoke"])
    cfg = dataclasses.replace(params["bc"], hidden=16, batch_size=8)
    run = Path(run_dir(TASK, "bc", 0))
    train_run("bc", cfg, env_name=ENV, dataset_dir=str(other_dataset), out_dir=run, seed=0, steps=2, eval_every=1,
              curve_episodes=1, device="cpu", resume_path=None, budget="smoke")
    train = json.loads((run / "train.json").read_text())
    assert train["reference_scores"] == {"ref_min_score": REF_MIN, "ref_max_score": REF_MAX, "source": "dataset"}
    point = train["curve"][0]  # the learning curve, normalised with the dataset's reference scores
    assert point["score"] == pytest.approx(100 * point["return"] / REF_MAX)
    assert point["score"] != pytest.approx(float(normalized_score(ENV, point["return"])))  # not the D4RL table's

    # the evaluate stage normalises the final evaluation with what the run recorded
    p = config.StageParams("evaluate", params, stage_keys("evaluate"), budget_keys("evaluate"))
    _evaluate_stage().main(p, Namespace(task=parse(TASK), algo="bc", seed=0))
    result = json.loads(Path(eval_file(TASK, "bc", 0)).read_text())
    assert result["final_score"] == pytest.approx(100 * result["final_return"] / REF_MAX)
    assert result["reference_scores"] == train["reference_scores"]


def _generate(out: Path, seed: int = 0, task: str = "halfcheetah-random", agent_dir: Path | None = None) -> dict:
    from diffrl.generate import make_dataset
    from diffrl.tasks import parse
    return make_dataset(parse(task), out, agent_dir=agent_dir, episodes=1, seed=seed)


def test_a_generated_dataset_records_its_project_requirements_and_behaviour_agent(tmp_path):
    from diffrl.offline import describe_dataset
    from diffrl.utils import cpu_name, write_json
    info = _generate(tmp_path / "a")
    # the CPU model that computed it, which tables quote with the data (the same seed gives the same
    # data only on the same CPU model)
    assert info["machine"] == f"{cpu_name()}, cpu"
    write_json(tmp_path / "a" / "info.json", {**info, "source": "generate"})
    assert describe_dataset(str(tmp_path / "a")).endswith(f"; generated on {cpu_name()}, cpu; not D4RL)")
    meta = load_offline(tmp_path / "a", ENV).metadata
    version = importlib.metadata.version("diffrl")
    assert meta["author"] == {f"diffrl {version}"}
    assert meta["code_permalink"] == f"diffrl=={version}"  # pyproject.toml declares no repository URL
    assert meta["requirements"] == [f"gymnasium[mujoco]=={importlib.metadata.version('gymnasium')}",
                                    f"mujoco=={importlib.metadata.version('mujoco')}"]
    assert meta["algorithm_name"] == "random"
    assert meta["behavior_agent"] == {"algorithm": "random", "score": None, "env_steps": 0, "seed": 0}
    spec = env_spec(ENV)
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (spec.ref_min, spec.ref_max)
    # same seed, same dataset: data and metadata
    _generate(tmp_path / "b")
    a, b = load_offline(tmp_path / "a", ENV), load_offline(tmp_path / "b", ENV)
    assert all(np.array_equal(a.arrays()[k], b.arrays()[k]) for k in a.arrays())
    assert a.metadata == b.metadata


def test_write_minari_records_the_behaviour_agent(tmp_path):
    from diffrl.data import write_minari
    episodes = [{"observations": b.observations, "actions": b.actions, "rewards": b.rewards,
                 "terminations": b.terminations, "truncations": b.truncations} for b in _buffers()]
    write_minari(tmp_path / "ds", "local/halfcheetah/medium-v0", episodes, ENV, "SAC", "test",
                 behavior_agent={"score": 33.5, "env_steps": 45000, "seed": 0})
    meta = load_offline(tmp_path / "ds", ENV).metadata
    assert meta["algorithm_name"] == "SAC"
    assert meta["behavior_agent"] == {"algorithm": "SAC", "score": 33.5, "env_steps": 45000, "seed": 0}


def test_a_dataset_drawn_from_the_data_agent_records_it(tmp_path):
    """The environment's SAC data agent (a few warm-up steps: its medium score reached at its first
    evaluation) writes its medium and expert policies; a medium dataset drawn from it records the
    agent's medium score, env steps and seed as its behaviour agent."""
    from diffrl.algos.sac import SACConfig
    from diffrl.generate import AGENT_FILES, train_data_agent
    agent = tmp_path / "agent"
    trained = train_data_agent(ENV, agent, sac_cfg=SACConfig(hidden=16), sac_steps=20, sac_warmup=20, sac_eval_every=20,
                               medium_target=-1e9, seed=0)
    assert trained["target_reached"] and trained["medium"]["env_steps"] == trained["expert"]["env_steps"] == 20
    assert {p.name for p in agent.iterdir()} == {*AGENT_FILES.values(), "info.json"}
    info = _generate(tmp_path / "medium", task="halfcheetah-medium", agent_dir=agent)
    assert info["task"] == "halfcheetah-medium" and info["episodes"] == 1
    meta = load_offline(tmp_path / "medium", ENV).metadata
    assert meta["algorithm_name"] == "SAC"
    assert meta["behavior_agent"] == {"algorithm": "SAC", "score": trained["medium"]["score"], "env_steps": 20,
                                      "seed": 0}
