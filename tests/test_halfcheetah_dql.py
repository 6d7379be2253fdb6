"""Diffusion-QL beats diffusion BC on the small generated HalfCheetah medium dataset (settings and
measured margins: tests/halfcheetah_learning.py)."""
import json

import pytest

from diffrl.data import load_offline
from diffrl.envs import normalized_score
from halfcheetah_learning import DATA, ENV, MARGIN, SEED, score, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.learning
def test_diffusion_ql_beats_diffusion_bc_on_generated_halfcheetah_medium(halfcheetah_bc_score, tmp_path):
    dql, bc_score = score(train("dql", tmp_path)), halfcheetah_bc_score
    print(f"normalised scores, seed {SEED}: bc {bc_score:.2f}, dql {dql:.2f} (margin {MARGIN})")
    assert dql > bc_score + MARGIN, {"bc": bc_score, "dql": dql, "margin": MARGIN}


def test_fixture_is_the_documented_generated_dataset():
    info = json.loads((DATA / "info.json").read_text())
    assert info["source"] == "generate" and info["quality"] == "medium" and info["env"] == ENV
    assert "NOT D4RL" in info["note"]
    data = load_offline(DATA, ENV)
    assert len(data.episode_returns) == info["episodes"] == 20
    assert len(data.obs) == info["transitions"] == 20_000
    assert data.metadata["ref_min_score"] == pytest.approx(-280.178953)
    assert data.metadata["ref_max_score"] == pytest.approx(12135.0)
    mean = normalized_score(ENV, data.episode_returns).mean()
    assert mean == pytest.approx(info["score_mean"], abs=1e-6)
