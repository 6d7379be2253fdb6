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
from diffrl.pipeline import STAGES
from diffrl.resources import MIN_RUNTIME_MIN, job_resources

from conftest import ENV1, ROOT, run

pytestmark = pytest.mark.pipeline
LOCALQ = ROOT / "workflow/profiles/cluster-generic"



def test_generic_cluster_profile_submits_polls_and_finishes(project):
    targets = ["data/toy/8gaussians.npz", "runs/bandit/8gaussians/bc.npz"]
    out = run(["snakemake", "--workflow-profile", "workflow/profiles/cluster-generic", "--seconds-between-status-checks", "1",
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


def fake_slurm(project, tmp_path, *args):
    """Run the SLURM profile against stand-in SLURM commands: sbatch records each call (and refuses
    it, so nothing runs). Returns {group or rule name: sbatch argv}."""
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
    out = run(["snakemake", "--workflow-profile", "workflow/profiles/slurm", "--retries", "0",
               "--slurm-init-seconds-before-status-checks", "1",
               "--default-resources", "slurm_account=testacct", "slurm_partition=gpu", *args],
              project, env=env, check=False)
    assert out.returncode != 0 and "stand-in cluster, submission recorded" in out.stdout + out.stderr, \
        (out.stdout + out.stderr)[-3000:]
    calls = {}
    for line in record.read_text().splitlines():
        argv = json.loads(line)
        calls[argv[argv.index("--comment") + 1].split("_wildcards_")[0].removeprefix("rule_")] = argv
    return calls


def test_slurm_profile_renders_sbatch_arguments_from_the_budget(project, tmp_path):
    """The SLURM plugin reads the profile and builds one sbatch call per ready job (a GPU stage: per
    group of one job)."""
    targets = {"data_agent": "data/halfcheetah/agent", "toy_dataset": "data/toy/8gaussians.npz",
               "bandit_train": "runs/bandit/8gaussians/dql.npz"}
    calls = fake_slurm(project, tmp_path, "--config", "budget=paper", "device=cuda", "--", *targets.values())
    by_rule = {name.removeprefix("gpu_"): argv for name, argv in calls.items()}
    assert set(by_rule) == set(targets), calls

    P = config.load(project / "params.yaml", ["budget=paper", "device=cuda"])
    wildcards = {"data_agent": {"env": "halfcheetah"}, "toy_dataset": {"name": "8gaussians"},
                 "bandit_train": {"name": "8gaussians", "algo": "dql"}}
    for rule, argv in by_rule.items():
        want = job_resources(rule, P)
        text = " ".join(argv)
        assert f"-t {want['runtime'](wildcards[rule], 1)}" in text, \
            f"rule {rule} must declare `resources: **job_resources({rule!r}, P)`: {text[:400]}"
        assert f"--mem {want['mem_mb']}" in text and f"--cpus-per-task={want['cpus_per_task']}" in text
        assert "-A testacct" in text and "-p gpu" in text and "--requeue" in text
        assert ("--gres=gpu:1" in argv) == (rule != "toy_dataset"), (rule, text)
        assert not any(a.startswith("--gpus") for a in argv), text
        assert "logs/slurm/" in text and rule in text  # the profile's slurm-logdir
        wrapped = shlex.split(argv[-1].removeprefix("--wrap="))
        assert "--executor" in wrapped and wrapped[wrapped.index("--executor") + 1] == "slurm-jobstep"
        # the profile's own settings hold (the default workflow profile's local ones do not override them)
        assert wrapped[wrapped.index("--latency-wait") + 1] == "120", wrapped
    # paper-budget jobs ask for hours, toy data for the minimum
    assert int(by_rule["data_agent"][by_rule["data_agent"].index("-t") + 1]) > 60
    assert by_rule["toy_dataset"][by_rule["toy_dataset"].index("-t") + 1] == str(MIN_RUNTIME_MIN)


def test_slurm_profile_packs_several_runs_onto_one_gpu(project, tmp_path):
    """`--group-components gpu=3`: three independent GPU jobs go out as one submission that asks
    for one GPU and for the three jobs' CPUs and memory together."""
    algos = ("bc", "dql", "iql")
    calls = fake_slurm(project, tmp_path, "--group-components", "gpu=3", "--config", "budget=paper", "device=cuda",
                       "--", "data/toy/8gaussians.npz", *(f"runs/bandit/8gaussians/{a}.npz" for a in algos))
    calls.pop("toy_dataset", None)
    assert len(calls) == 1, list(calls)
    (argv,) = calls.values()
    text = " ".join(argv)
    P = config.load(project / "params.yaml", ["budget=paper", "device=cuda"])
    per_job = [job_resources("bandit_train", P) for _ in algos]
    assert argv.count("--gres=gpu:1") == 1 and not any(a.startswith("--gpus") for a in argv), text
    assert f"--cpus-per-task={sum(r['cpus_per_task'] for r in per_job)}" in text, text
    assert f"--mem {sum(r['mem_mb'] for r in per_job)}" in text, text
    for a in algos:  # every job of the group runs inside the one submission
        assert f"algo={a}" in argv[-1] or f"/{a}.npz" in argv[-1], argv[-1][:2000]


def test_gpu_slots_let_several_jobs_share_one_gpu(project):
    """On one machine, `--resources gpu_slots=N` runs up to N GPU jobs at once: every GPU job takes one
    slot (the dry run lists it), and the cost plan schedules N of them side by side."""
    targets = [f"runs/halfcheetah-medium/eval/bc/seed{s}.json" for s in range(4)]
    cfg = ["--config", "device=cuda", "budget=quick", "seeds=[0,1,2,3]", "--", *targets]
    dry = run(["snakemake", "-n", "--printshellcmds", *cfg], project).stdout
    # the data agent, 4 train, 4 eval (the dataset, rolled out from the agent, runs on the CPU)
    assert dry.count("gpu_slots=1") == 9 and dry.count("gres=gpu:1") == 9, dry[-2000:]
    walls = {}
    for n in (1, 4):
        out = run(["snakemake", "--cores", "8", "--resources", f"gpu_slots={n}", *cfg], project,
                  env={**ENV1, "DIFFRL_PLAN_ONLY": "1"}).stderr
        line = next(x for x in out.splitlines() if "of wall time on a CUDA GPU" in x)
        assert f"{n} job(s) sharing it" in line, line
        walls[n] = line.split("about ")[1].split(" of wall")[0]
    assert walls[1] != walls[4], walls


def test_the_slurm_profile_groups_the_stages_its_record_groups():
    """The profile (YAML, read by Snakemake before the workflow) lists each stage's `group` of
    diffrl.pipeline.STAGES: every GPU stage but the data agent, which every dataset of its environment
    depends on."""
    profile = (ROOT / "workflow/profiles/slurm/config.yaml").read_text()
    import yaml
    groups = dict(g.split("=") for g in yaml.safe_load(profile)["groups"])
    assert groups == {name: st.group for name, st in STAGES.items() if st.group}
    assert set(groups) == {name for name, st in STAGES.items() if st.gpu} - {"data_agent"}


def test_job_resources_follow_the_budget_device_and_attempt():
    wc = {"task": "halfcheetah-medium", "algo": "dql", "seed": "0"}
    res = {b: job_resources("offline_train", config.load(ROOT / "params.yaml", [f"budget={b}", "device=cuda"]))
           for b in ("smoke", "quick", "paper")}
    assert res["smoke"]["runtime"](wc) <= res["quick"]["runtime"](wc) < res["paper"]["runtime"](wc)
    assert res["paper"]["runtime"](wc, attempt=2) > res["paper"]["runtime"](wc)  # a retry gets more time
    assert all(r["gpu_slots"] == 1 and r["gres"] == "gpu:1" for r in res.values())
    cpu = config.load(ROOT / "params.yaml", ["budget=paper", "device=cpu"])
    assert "gpu_slots" not in job_resources("offline_train", cpu) and "gres" not in job_resources("offline_train", cpu)
    assert job_resources("offline_train", cpu)["runtime"](wc) > res["paper"]["runtime"](wc)  # CPU is slower
    assert "gres" not in job_resources("summary", config.load(ROOT / "params.yaml", ["device=cuda"]))
    eda = job_resources("offline_train", cpu)["runtime"]({**wc, "algo": "eda"})
    assert eda != job_resources("offline_train", cpu)["runtime"](wc)  # per-algorithm cost
    with pytest.raises(KeyError, match="no resource estimate for stage 'nope'"):
        job_resources("nope", cpu)
    # every stage (a rule of the Snakefile) has an estimate
    for rule in STAGES:
        assert job_resources(rule, cpu)["mem_mb"] > 0, rule


def test_gpu_check_runs_end_to_end_in_its_dry_mode(tmp_path):
    """benchmarks/gpu_check.sh --dry: every section of the device check on CPU with tiny sizes, one JSON
    and one Markdown table, nothing failed."""
    out = run(["bash", "benchmarks/gpu_check.sh", "--dry", "--out", str(tmp_path)], ROOT)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry"] and "DRY" in (tmp_path / "gpu_check.md").read_text() and "## Smoke graph" in out.stdout
    rows = report["steps"] + report["online"] + report["sharing"] + [report["smoke"]]
    assert not [r for r in rows if "error" in r], rows
    assert {r["compile"] for r in report["steps"]} == {"none"}
    assert all(r["gflop"] > 0 and 0 < r["of_sgemm"] for r in report["steps"])
    assert [r["runs"] for r in report["sharing"]] == [1, 2] and report["sharing"][1]["aggregate_steps_per_s"] > 0
    assert report["smoke"]["returncode"] == 0 and not (tmp_path / ".scratch").exists()
