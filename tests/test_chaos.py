"""Chaos: a small graph whose scheduler, job shells and jobs are SIGKILLed ten times at seeded random
moments, each time recovered as docs/troubleshooting.md says (the same command again), ends with
every output, every declared seed in the summary, and every per-seed evaluation and model equal
bit for bit to an uninterrupted run in another copy of the project (so also: the same params and
seeds give the same bits in two copies). The longer version: studies/chaos/chaos.py."""
import importlib.util
import json

import pytest

from conftest import ENV1, ROOT, copy_project

pytestmark = pytest.mark.pipeline

_spec = importlib.util.spec_from_file_location("chaos", ROOT / "studies/chaos/chaos.py")
chaos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chaos)

SEED, KILLS = 3, 10


def test_ten_random_kills_end_bit_identical_to_an_uninterrupted_run(tmp_path):
    cfg = chaos.graph_config(["iql"], [0, 1], steps=600)
    env = {**ENV1, "DIFFRL_CHECKPOINT_EVERY": "100"}
    killed = copy_project(tmp_path / "chaos")
    kills = chaos.run_under_kills(chaos.prepare(killed, "snakemake", cfg), killed, KILLS, SEED, env,
                                  window=(1.5, 4.0))  # kills land before the graph could finish
    assert len(kills) == KILLS, f"the graph finished after {len(kills)} kills (too small for the window): {kills}"
    calm = copy_project(tmp_path / "calm")
    assert chaos.run_under_kills(chaos.prepare(calm, "snakemake", cfg), calm, 0, SEED, env) == []
    print(json.dumps(chaos.compare(killed, calm, cfg)))
    # nothing of the killed runs is left behind: no resume checkpoint, no temporary, no lock
    assert not list(killed.glob("runs/.resume/**/*.pt"))
    assert not [p for p in killed.glob("**/.*.tmp*") if ".snakemake" not in p.parts and ".git" not in p.parts]
    assert not list(killed.glob(".snakemake/locks/*"))
