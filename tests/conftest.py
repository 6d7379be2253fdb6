import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# `pytest -n 2` (the README's command) runs two workers side by side: one torch thread each, since
# two-thread torch on a core another process is busy with slows down many-fold
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(int(os.environ.get("DIFFRL_TEST_THREADS", "1" if WORKERS > 1 else "2")))
# pipeline jobs launched by tests run one thread each (the machine may be shared)
ENV1 = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFRL_THREADS": "1"}


# Files go to the xdist workers longest first (measured CPU time, one core), so that the short ones
# fill in at the end and neither worker waits for a long file started late. xdist hands each worker
# two files to start with (the first the end-to-end and EDA files, the second Diffusion-QL's and
# SDAC/DPMD's); its `--dist loadfile` would otherwise order files by their number of tests and start
# the one-test end-to-end file last, so the whole suite would wait for it.
LONGEST_FIRST = ("test_pipeline_e2e.py", "test_halfcheetah_dql.py", "test_halfcheetah_eda.py", "test_dpmd.py",
                 "test_pipeline_graph.py", "test_learning.py", "test_reliability.py", "test_chaos.py", "test_queue.py",
                 "test_tilts.py", "test_eda.py",
                 "test_extending.py", "test_dql.py", "test_dtql.py", "test_cluster.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: files keep their order


def run(cmd, cwd, check=True, env=ENV1, timeout=1200):
    """Run a command in `cwd`; with check, fail the test with the tail of its output."""
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def copy_project(dst: Path) -> Path:
    """A fresh git checkout-like copy of the project (tracked and untracked source, no outputs)."""
    anywhere = shutil.ignore_patterns(".git", ".snakemake", "__pycache__", "*.egg-info", ".pytest_cache",
                                      "MUJOCO_LOG.TXT")
    # pipeline outputs at the top (tests/data is a fixture), and the studies, which no pipeline job reads
    outputs = {"data", "runs", "logs", "results", "studies"}

    def ignore(folder, names):
        top = outputs.intersection(names) if Path(folder) == ROOT else set()
        return set(anywhere(folder, names)) | top
    shutil.copytree(ROOT, dst, ignore=ignore)
    (dst / "results").mkdir(exist_ok=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dst, check=True, env=env)
    return dst


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path / "project")


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Small nets run fastest on one thread (and the machine may be shared)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def halfcheetah_bc_score(tmp_path_factory, worker_id):
    """Diffusion BC's score on the small HalfCheetah dataset: the baseline of the HalfCheetah
    learning tests. Trained once per test run: the two test files run on separate xdist workers,
    and the first to need the score trains BC while holding a lock in the run's shared temporary
    folder; the other reads the score it wrote (pytest-xdist's recipe for a session fixture)."""
    from halfcheetah_learning import bc_baseline

    def train():
        with torch_threads(1):  # as the tests' own training (their `one_thread`)
            return bc_baseline(tmp_path_factory.mktemp("bc"))
    if worker_id == "master":  # no xdist: nothing to share
        return train()
    path = tmp_path_factory.getbasetemp().parent / "halfcheetah_bc_score.json"  # this run's, all workers'
    with FileLock(f"{path}.lock"):
        if not path.exists():
            path.write_text(json.dumps(train()))
        return json.loads(path.read_text())
