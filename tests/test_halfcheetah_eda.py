"""EDA beats diffusion BC and its own behaviour model on the small generated HalfCheetah medium
dataset (settings and measured margins: tests/halfcheetah_learning.py)."""
import pytest

from halfcheetah_learning import MARGIN, SEED, score, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.learning
def test_eda_beats_diffusion_bc_and_its_own_behaviour_model(halfcheetah_bc_score, tmp_path):
    """The three EDA stages chained as in the pipeline (each loads the previous one's model.pt)."""
    critic, behavior = train("eda_critic", tmp_path), train("eda_behavior", tmp_path)
    eda = score(train("eda", tmp_path, pretrained={"critic": critic, "behavior": behavior}))
    mu, bc_score = score(behavior), halfcheetah_bc_score
    print(f"normalised scores, seed {SEED}: bc {bc_score:.2f}, eda behaviour {mu:.2f}, eda {eda:.2f} "
          f"(margin {MARGIN})")
    assert eda > bc_score + MARGIN, {"bc": bc_score, "eda": eda, "margin": MARGIN}
    assert eda > mu + MARGIN, {"eda behaviour": mu, "eda": eda, "margin": MARGIN}
