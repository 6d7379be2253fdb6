import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(int(os.environ.get("DIFFRL_TEST_THREADS", "2")))


def copy_project(dst: Path) -> Path:
    """A fresh git checkout-like copy of the project (tracked and untracked source, no outputs)."""
    ignore = shutil.ignore_patterns(".git", "data", "runs", "logs", ".snakemake", "__pycache__", "*.egg-info",
                                    ".pytest_cache", "results", "MUJOCO_LOG.TXT")
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


@pytest.fixture(scope="module")
def one_thread():
    """Small nets run fastest on one thread (and the machine may be shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
