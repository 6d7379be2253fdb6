"""Cluster execution: a real submit/status round trip through the generic-cluster executor (with
the profile's local queue), the SLURM profile rendered into sbatch arguments by the SLURM
executor plugin (against stand-in SLURM commands), and per-job resources from the budget."""
import json
import os
import shlex
import sys
import time

import pytest

from diffrl import config
from diffrl.resources import MIN_RUNTIME_MIN, job_resources

from conftest import ENV1, ROOT, run

pytestmark = pytest.mark.pipeline
LOCALQ = ROOT / "workflow/profiles/cluster-generic"



def test_generic_cluster_profile_submits_polls_and_finishes(project):
    targets = ["data/toy/8gaussians.npz", "runs/bandit/8gaussians/bc.npz"]
    out = run(["snakemake", "--profile", "workflow/profiles/cluster-generic", "--seconds-between-status-checks", "1",
               "--config", "budget=smoke", "seeds=[0]", "budgets={smoke: {toy_steps: 10, toy_samples: 200}}",
               "--", *targets], project)
    log = out.stdout + out.stderr
    for t in targets:
        assert (project / t).stat().st_size > 0
    ids = [line.split("external jobid '")[1].rstrip("'.") for line in log.splitlines() if "external jobid '" in line]
    assert len(ids) == 2, log[-3000:]
    state = project / ".snakemake/localq"
    for jobid in ids:  # each job went through the queue: submitted, ran detached, exit code 0
        info = json.loads((state / f"{jobid}.json").read_text())
        assert info["name"] in ("toy_dataset", "bandit_train") and info["runtime_min"] > 0 and info["mem_mb"] > 0
        assert (state / f"{jobid}.exit").read_text().strip() == "0"
        assert run([sys.executable, str(LOCALQ / "status.py"), jobid], project).stdout.strip() == "success"
    assert "2 of 2 steps (100%) done" in log


def test_local_queue_reports_running_failed_and_cancels(tmp_path):
    env = {**os.environ, "LOCALQ_DIR": str(tmp_path / "q")}

    def q(script, *args):
        return run([sys.executable, str(LOCALQ / script), *args], tmp_path, env=env).stdout.strip()

    scripts = {}
    for name, body in (("ok", "exit 0"), ("bad", "exit 3"), ("slow", "sleep 60"), ("late", "sleep 60")):
        scripts[name] = tmp_path / f"{name}.sh"
        scripts[name].write_text(f"#!/bin/sh\n{body}\n")
    ids = {name: q("submit.py", "--name", name, *(["--runtime", "0.02"] if name == "late" else []), str(path))
           for name, path in scripts.items()}
    deadline = time.time() + 30
    while q("status.py", ids["ok"]) == "running" or q("status.py", ids["bad"]) == "running":
        assert time.time() < deadline
        time.sleep(0.2)
    assert q("status.py", ids["ok"]) == "success" and q("status.py", ids["bad"]) == "failed"
    assert q("status.py", ids["slow"]) == "running"
    q("cancel.py", ids["slow"])
    while q("status.py", ids["slow"]) == "running" or q("status.py", ids["late"]) == "running":
        assert time.time() < deadline, "cancel or the wall-time limit did not stop a job"
        time.sleep(0.2)
    assert q("status.py", ids["slow"]) == "failed"
    assert q("status.py", ids["late"]) == "failed"  # killed at its 1.2 s wall time


FAKE_SBATCH = """#!{python}
import json, os, sys
with open(os.environ["FAKE_SLURM_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print("sbatch: error: stand-in cluster, submission recorded", file=sys.stderr)
sys.exit(1)
"""


def test_slurm_profile_renders_sbatch_arguments_from_the_budget(project, tmp_path):
    """The SLURM plugin reads the profile and builds one sbatch call per ready job; a stand-in
    sbatch records the call (and refuses it, so nothing runs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable))
    for name, out in (("sacct", "testacct"), ("sacctmgr", "testacct"), ("sshare", "testacct"),
                      ("sinfo", "PARTITION\\ncpu*\\ngpu"), ("squeue", ""), ("scancel", "")):
        (bin_dir / name).write_text(f"#!/bin/sh\nprintf '{out}\\n'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    record = tmp_path / "sbatch.jsonl"
    env = {**ENV1, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM_LOG": str(record)}
    targets = {"dataset": "data/halfcheetah/dataset", "toy_dataset": "data/toy/8gaussians.npz",
               "bandit_train": "runs/bandit/8gaussians/dql.npz"}
    out = run(["snakemake", "--profile", "workflow/profiles/slurm", "--retries", "0",
               "--slurm-init-seconds-before-status-checks", "1",
               "--config", "budget=paper", "device=cuda",
               "--default-resources", "slurm_account=testacct", "slurm_partition=gpu",
               "--", *targets.values()], project, env=env, check=False)
    assert out.returncode != 0 and "stand-in cluster, submission recorded" in out.stdout + out.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    by_rule = {}
    for argv in calls:
        rule = argv[argv.index("--comment") + 1].split("_wildcards_")[0].removeprefix("rule_")
        by_rule[rule] = argv
    assert set(by_rule) == set(targets), calls

    P = config.load(project / "params.yaml", ["budget=paper", "device=cuda"])
    wildcards = {"dataset": {"env": "halfcheetah"}, "toy_dataset": {"name": "8gaussians"},
                 "bandit_train": {"name": "8gaussians", "algo": "dql"}}
    for rule, argv in by_rule.items():
        want = job_resources(rule, P)
        text = " ".join(argv)
        assert f"-t {want['runtime'](wildcards[rule], 1)}" in text, \
            f"rule {rule} must declare `resources: **job_resources({rule!r}, P)`: {text[:400]}"
        assert f"--mem {want['mem_mb']}" in text and f"--cpus-per-task={want['cpus_per_task']}" in text
        assert "-A testacct" in text and "-p gpu" in text and "--requeue" in text
        assert ("--gpus=1" in argv) == (rule != "toy_dataset"), (rule, text)
        assert "logs/slurm/rule_" + rule in text  # the profile's slurm-logdir
        wrapped = shlex.split(argv[-1].removeprefix("--wrap="))
        assert "--executor" in wrapped and wrapped[wrapped.index("--executor") + 1] == "slurm-jobstep"
    # paper-budget jobs ask for hours, toy data for the minimum
    assert int(by_rule["dataset"][by_rule["dataset"].index("-t") + 1]) > 60
    assert by_rule["toy_dataset"][by_rule["toy_dataset"].index("-t") + 1] == str(MIN_RUNTIME_MIN)


def test_job_resources_follow_the_budget_device_and_attempt():
    wc = {"env": "halfcheetah", "algo": "dql", "seed": "0"}
    res = {b: job_resources("offline_train", config.load(ROOT / "params.yaml", [f"budget={b}", "device=cuda"]))
           for b in ("smoke", "quick", "paper")}
    assert res["smoke"]["runtime"](wc) <= res["quick"]["runtime"](wc) < res["paper"]["runtime"](wc)
    assert res["paper"]["runtime"](wc, attempt=2) > res["paper"]["runtime"](wc)  # a retry gets more time
    assert all(r["gpu"] == 1 for r in res.values())
    cpu = config.load(ROOT / "params.yaml", ["budget=paper", "device=cpu"])
    assert job_resources("offline_train", cpu)["gpu"] == 0
    assert job_resources("offline_train", cpu)["runtime"](wc) > res["paper"]["runtime"](wc)  # CPU is slower
    assert job_resources("summary", config.load(ROOT / "params.yaml", ["device=cuda"]))["gpu"] == 0
    eda = job_resources("offline_train", cpu)["runtime"]({**wc, "algo": "eda"})
    assert eda != job_resources("offline_train", cpu)["runtime"](wc)  # per-algorithm cost
    with pytest.raises(KeyError, match="no resource estimate for stage 'nope'"):
        job_resources("nope", cpu)
    # every rule of the Snakefile has an estimate
    rules = [line.split()[1].rstrip(":") for f in (ROOT / "workflow/rules").glob("*.smk")
             for line in f.read_text().splitlines() if line.startswith("rule ")]
    for rule in rules:
        assert job_resources(rule, cpu)["mem_mb"] > 0, rule
