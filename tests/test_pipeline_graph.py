"""The Snakemake graph and dvc.yaml declare the same stages, commands, inputs, outputs and params."""
import re
import subprocess
from pathlib import Path

from diffrl.pipeline import STAGES, stage_keys

from conftest import ROOT


def snakemake_jobs(cwd=ROOT, extra=()):
    out = subprocess.run(["snakemake", "-n", "--forceall", "-p", "--nolock", *extra], cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    jobs, cur = [], None
    for line in out.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            cur = {"rule": m.group(1), "input": [], "output": [], "cmd": None, "wildcards": {}}
            jobs.append(cur)
        elif cur is not None and line.startswith("    input: "):
            cur["input"] = [s.strip() for s in line[len("    input: "):].split(",")]
        elif cur is not None and line.startswith("    output: "):
            cur["output"] = [s.strip() for s in line[len("    output: "):].split(",")]
        elif cur is not None and line.startswith("    wildcards: "):
            cur["wildcards"] = dict(kv.split("=", 1) for kv in line[len("    wildcards: "):].split(", "))
        elif cur is not None and line.startswith("Shell command: "):
            cur["cmd"] = line[len("Shell command: "):].strip()
    return [j for j in jobs if j["rule"] != "all"]


def dvc_stages(cwd=ROOT):
    from dvc.repo import Repo
    with Repo(str(cwd)) as repo:
        stages = []
        for st in repo.index.stages:
            params = [p for d in st.deps if hasattr(d, "params") for p in d.params]
            deps = [Path(d.def_path).as_posix() for d in st.deps if not hasattr(d, "params")]
            stages.append({"name": st.name.split("@")[0], "cmd": st.cmd, "deps": deps, "params": sorted(params),
                           "outs": [Path(o.def_path).as_posix() for o in st.outs]})
    return stages


def test_same_stages_commands_inputs_outputs_and_params():
    jobs = snakemake_jobs()
    stages = dvc_stages()
    assert len(jobs) >= 20, jobs
    by_out = {tuple(sorted(s["outs"])): s for s in stages}
    assert len(jobs) == len(stages), (sorted(j["rule"] for j in jobs), sorted(s["name"] for s in stages))
    for job in jobs:
        key = tuple(sorted(job["output"]))
        assert key in by_out, f"Snakemake job {job['rule']} -> {key} has no DVC stage"
        st = by_out[key]
        assert st["name"] in (job["rule"], f"{job['rule']}_{job['wildcards'].get('algo')}"), (st["name"], job)
        assert st["cmd"] == job["cmd"], (st["cmd"], job["cmd"])
        # inputs: the library files are covered by the `diffrl` dependency, eval files by their folder
        for path in job["input"]:
            assert any(path == d or path.startswith(d.rstrip("/") + "/") for d in st["deps"]), \
                f"{job['rule']}: Snakemake input {path} is not a DVC dependency of {st['name']}"
        for dep in st["deps"]:
            assert any(p == dep or p.startswith(dep.rstrip("/") + "/") for p in job["input"]), \
                f"{st['name']}: DVC dependency {dep} is not a Snakemake input of {job['rule']}"
        assert st["params"] == sorted(stage_keys(job["rule"], **job["wildcards"])), (st["name"], st["params"])


def test_snakemake_params_are_the_declared_keys():
    """Every rule's params: carries exactly the values its stage declares."""
    text = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    rules = re.findall(r"rule (\w+):.*?declared=(?:lambda wc: )?declared\(\"(\w+)\"", text, flags=re.S)
    assert rules and all(a == b for a, b in rules), rules
    assert {a for a, _ in rules} == set(STAGES)


def test_hopper_and_walker2d_go_through_the_same_graph():
    """Every environment gets the same jobs (dataset, pretraining, all rows, evaluation, table)."""
    counts = {}
    for env in ("halfcheetah", "hopper", "walker2d"):
        out = subprocess.run(["snakemake", "-n", "--forceall", "--nolock", f"results/{env}_summary.csv"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        stats = out.stdout.split("Job stats:")[1].split("\n\n")[0]
        counts[env] = stats
        assert f"data/{env}/dataset" in out.stdout and f"results/{env}_summary.csv" in out.stdout
    assert counts["hopper"] == counts["walker2d"] == counts["halfcheetah"]
