"""A hyperparameter sweep through DVC's experiment queue from a fresh clone: `dvc exp run
--queue` with a grid override queues one experiment per value, `dvc queue start` runs them in
workers, `dvc exp show` lists each with its params and outputs, cached by hash."""
import json
import shutil
import time

import numpy as np
import pytest

from conftest import run

pytestmark = pytest.mark.pipeline
OUT = "runs/bandit/8gaussians/bc.npz"


def dvc(*args, cwd, check=True):
    return run(["dvc", *args], cwd, check=check)


def test_dvc_queue_runs_a_learning_rate_sweep(project):
    shutil.rmtree(project / ".dvc" / "tmp", ignore_errors=True)  # a clone has none
    sweep = ["-S", "budget=smoke", "-S", "seeds=[0]", "-S", "budgets.smoke.toy_steps=20",
             "-S", "budgets.smoke.toy_samples=200", "-S", "++bc.lr=0.001,0.0003"]
    queued = dvc("exp", "run", "--queue", *sweep, "bandit_train_bc@8gaussians", cwd=project)
    assert queued.stdout.count("Queued experiment") == 2, queued.stdout
    try:
        dvc("queue", "start", "-j", "1", cwd=project)
        deadline = time.time() + 300
        while True:
            status = dvc("queue", "status", cwd=project).stdout
            if "Queued" not in status and "Running" not in status:
                break
            assert time.time() < deadline, status
            time.sleep(2)
    finally:
        dvc("queue", "stop", "--kill", cwd=project, check=False)
    assert status.count("Success") == 2, status

    shown = json.loads(dvc("exp", "show", "--json", cwd=project).stdout)
    exps = {}
    for rev in shown:
        for exp in rev.get("experiments") or []:
            for r in exp["revs"]:
                data = r["data"]
                params = data["params"]["params.yaml"]["data"]
                exps[params["bc"]["lr"]] = (r["name"], data["outs"][OUT]["hash"], params)
    assert set(exps) == {0.001, 0.0003}, exps
    (_, h1, params), (_, h2, _) = exps[0.001], exps[0.0003]
    assert h1 and h2 and h1 != h2  # each experiment trained with its own learning rate
    assert params["budget"] == "smoke" and params["budgets"]["smoke"]["toy_steps"] == 20
    assert not (project / OUT).exists()  # experiments ran in their own workspaces

    # each result is in the local DVC cache under its hash (what `dvc exp apply` checks out)
    for h in (h1, h2):
        z = np.load(project / ".dvc/cache/files/md5" / h[:2] / h[2:])
        assert z["seed0"].shape == (500, 2) and np.isfinite(z["seed0"]).all()
