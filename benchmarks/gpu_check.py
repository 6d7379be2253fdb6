"""The device check: what this pipeline does with one GPU, in one short run (under 8 minutes on an
H200), written as one JSON file and one Markdown table.

1. steps: ms per gradient step of every offline algorithm (benchmarks/bench_steps.py), eager and,
   for Diffusion-QL and DTQL, with `compile: reduce-overhead` (torch.compile with CUDA graphs);
2. online: updates/s and action latency of the online variants (benchmarks/bench_online.py);
3. sharing: aggregate Diffusion-QL steps/s with 1, 4, 8 and 16 runs at once on the one GPU (each run
   its own process, as `--resources gpu_slots=N` runs them): the `gpu_slots` to use is where the
   aggregate stops growing (docs/scale.md);
4. packing bound: per step of Diffusion-QL, DTQL and IQL, the time of its matrix multiplies
   batched over K = 1, 4, 16, 64 seeds per seed against the step's time, and the most a packed step
   of K seeds could gain per seed (studies/packing/bound.py; compare with the sharing section);
5. smoke graph: wall time of `snakemake results/halfcheetah_summary.csv --config budget=smoke
   device=cuda` from a clean copy of the checkout, 16 jobs sharing the GPU.

    bash benchmarks/gpu_check.sh                 # on the GPU machine: studies/speed/results/gpu_check/
    bash benchmarks/gpu_check.sh --dry OUT       # the same code path on CPU with tiny sizes (tests)

A measurement that fails is recorded with its error and the check goes on; a section that would
overrun the time budget (--budget-s) is skipped and says so.
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ["sac", "iql", "bc", "dql_ql", "dql_qg", "dql_edp", "dql_eg_ood", "dtql_behavior", "dtql",
           "eda_behavior", "eda_align"]
COMPILED = ["dql_ql", "dtql"]
ONLINE = ["sac", "sdac", "dpmd_tilt"]
SHARING = [1, 4, 8, 16]
SHARED_ALGO = "dql_ql"
PACKED = ["dql_ql", "dtql", "iql"]
PACKS = "1,4,16,64"


def sizes(dry: bool) -> dict:
    if dry:  # every code path once, in seconds, on CPU (compiled networks: tests/test_core.py)
        return {"device": "cpu", "offline": ["iql"], "compiled": [], "online": ["sac"], "sharing": [1, 2],
                "packed": ["bc"], "packs": "1,2",
                "steps": 3, "shared_steps": 5, "online_args": ["--small", "--iters", "2", "--max-seconds", "2"],
                "smoke": ["-n"]}
    return {"device": "cuda", "offline": OFFLINE, "compiled": COMPILED, "online": ONLINE, "sharing": SHARING,
            "packed": PACKED, "packs": PACKS,
            "steps": 50, "shared_steps": 300, "online_args": ["--iters", "30", "--max-seconds", "5"], "smoke": []}


def last_json(cmd: list[str], timeout: float, env=None) -> dict:
    """Run a bench's `--one` and return its JSON line, or {"error": ...}."""
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(labels: list[dict], deadline: float, command) -> list[dict]:
    """Each label's measurement (`command(label)` run as a bench's `--one`) until the deadline; the
    ones left over say they were skipped."""
    rows = []
    for label in labels:
        result = ({"error": "skipped: time budget"} if time.time() > deadline
                  else last_json(command(label), timeout=max(10, deadline - time.time())))
        rows.append({**label, **result})
    return rows


def steps_section(sz, deadline) -> list[dict]:
    compiled = "reduce-overhead" if sz["device"] == "cuda" else "default"
    labels = ([{"algo": a, "compile": "none"} for a in sz["offline"]]
              + [{"algo": a, "compile": compiled} for a in sz["compiled"]])
    return measured(labels, deadline, lambda x: [
        sys.executable, "benchmarks/bench_steps.py", "--one", x["algo"], sz["device"], "1", "--compile", x["compile"],
        "--steps", str(max(2, sz["steps"] // 10) if x["algo"].startswith("eda_") else sz["steps"])])


def online_section(sz, deadline) -> list[dict]:
    return measured([{"variant": v} for v in sz["online"]], deadline, lambda x: [
        sys.executable, "benchmarks/bench_online.py", "--one", x["variant"], sz["device"], "1", *sz["online_args"]])


def packing_section(sz, deadline) -> list[dict]:
    return measured([{"algo": a} for a in sz["packed"]], deadline, lambda x: [
        sys.executable, "studies/packing/bound.py", "--one", x["algo"], "--device", sz["device"], "--packs",
        sz["packs"], "--steps", str(sz["steps"])])


def sharing_section(sz, deadline) -> list[dict]:
    """n processes of the same step benchmark at once; aggregate = sum of their steps/s."""
    rows = []
    for n in sz["sharing"]:
        if time.time() > deadline:
            rows.append({"runs": n, "error": "skipped: time budget"})
            continue
        cmd = [sys.executable, "benchmarks/bench_steps.py", "--one", SHARED_ALGO, sz["device"], "1",
               "--steps", str(sz["shared_steps"])]
        procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(n)]
        results = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(10, deadline - time.time() + 60))
                results.append(json.loads(out.strip().splitlines()[-1]) if p.returncode == 0
                               else {"error": (err.strip().splitlines() or ["?"])[-1][:200]})
            except subprocess.TimeoutExpired:
                p.kill()
                results.append({"error": "timed out"})
        ok = [r["ms_per_step"] for r in results if "ms_per_step" in r]
        row = {"runs": n, "ok": len(ok), "ms_per_step_mean": sum(ok) / len(ok) if ok else None,
               "aggregate_steps_per_s": sum(1000 / m for m in ok)}
        if len(ok) < n:
            row["error"] = next(r["error"] for r in results if "error" in r)
        rows.append(row)
    return rows


def smoke_section(sz, deadline, scratch: Path) -> dict:
    """The smoke graph from a clean copy of the tracked files (no cached runs)."""
    if time.time() > deadline:
        return {"error": "skipped: time budget"}
    copy = scratch / "smoke"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for f in filter(None, files.split("\0")):
        if (ROOT / f).is_file():
            (copy / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, copy / f)
    cores = str(os.cpu_count() or 1)
    cmd = ["snakemake", "--cores", cores, "--resources", "gpu_slots=16", *sz["smoke"],
           "results/halfcheetah_summary.csv", "--config", "budget=smoke", f"device={sz['device']}"]
    t0 = time.time()
    try:
        out = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=max(10, deadline - time.time()))
    except subprocess.TimeoutExpired:
        return {"command": " ".join(cmd), "error": "timed out (time budget)"}
    res = {"command": " ".join(cmd), "wall_s": time.time() - t0, "returncode": out.returncode}
    if out.returncode:
        res["error"] = (out.stderr.strip().splitlines() or ["?"])[-1][:200]
    return res


def machine(device: str) -> str:
    import torch
    from diffrl.utils import cpu_name
    cpu = cpu_name()
    gpu = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else "no GPU used"
    return f"{gpu}; {os.cpu_count()} x {cpu}; torch {torch.__version__}"


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    L = [f"# GPU check: {report['machine']}", "",
         f"{report['date']}, `{report['command']}`{' (DRY: CPU, tiny sizes; not a measurement)' if report['dry'] else ''}, "
         f"{report['wall_s']:.0f} s in all.", "",
         "## ms per gradient step (batch 256; EDA behaviour 2048)", "",
         "| algorithm | compile | ms/step | GFLOP/s | of sgemm | peak MB |", "|---|---|---|---|---|---|"]
    for r in report["steps"]:
        if "error" in r:
            L.append(f"| {r['algo']} | {r['compile']} | {r['error']} | | | |")
        else:
            L.append(f"| {r['algo']} | {r['compile']} | {r['ms_per_step']:.2f} | {fmt(r.get('gflops'))} | "
                     f"{fmt(r.get('of_sgemm'), '.2f')} | {r['peak_mb']:.0f} |")
    L += ["", "## Online variants (one process)", "", "| variant | updates/s | loop env steps/s | act ms |",
          "|---|---|---|---|"]
    for r in report["online"]:
        L.append(f"| {r['variant']} | {r['error']} | | |" if "error" in r else
                 f"| {r['variant']} | {r['updates_per_s']:.1f} | {r['loop_env_steps_per_s']:.1f} | {r['act_ms']:.2f} |")
    L += ["", f"## Runs sharing the device ({SHARED_ALGO}, one process each)", "",
          "| runs | finished | ms/step (mean) | aggregate steps/s |", "|---|---|---|---|"]
    for r in report["sharing"]:
        L.append(f"| {r['runs']} | {r.get('ok', 0)} | {fmt(r.get('ms_per_step_mean'))} | "
                 f"{fmt(r.get('aggregate_steps_per_s'))} |" + (f" {r['error']}" if "error" in r else ""))
    packs = [k for k in report["packs"].split(",")]
    L += ["", "## Packing bound (studies/packing/bound.py): batched matmuls ms per seed, and the most a packed "
          "step could gain per seed", "", "| step | ms/step | " + " | ".join(f"K={k} | bound" for k in packs) + " |",
          "|---|---|" + "---|---|" * len(packs)]
    for r in report["packing"]:
        L.append(f"| {r['algo']} | {r['error']} |" if "error" in r else
                 f"| {r['algo']} | {r['ms_per_step']:.2f} | " + " | ".join(
                     f"{r[f'batched_matmul_ms_per_seed_k{k}']:.3f} | {r[f'bound_k{k}']:.2f}" for k in packs) + " |")
    s = report["smoke"]
    L += ["", "## Smoke graph", "", f"`{s.get('command', '')}`: " +
          (f"{s['wall_s']:.0f} s" if "wall_s" in s else "") + (f" ({s['error']})" if "error" in s else ""), ""]
    return "\n".join(L)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes, the smoke graph as a dry run")
    p.add_argument("--out", default=str(ROOT / "studies/speed/results/gpu_check"), help="folder for gpu_check.json and .md")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting measurements after this long")
    a = p.parse_args(argv)
    sz = sizes(a.dry)
    if sz["device"] == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("error: no CUDA device is visible: run this on the GPU machine, or pass --dry", file=sys.stderr)
            return 2
    t0 = time.time()
    deadline = t0 + a.budget_s
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / ".scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    report = {"date": datetime.date.today().isoformat(), "machine": machine(sz["device"]), "dry": a.dry,
              "command": "bash benchmarks/gpu_check.sh" + (" --dry" if a.dry else "")}
    # the sections in the order of their value per second: sharing and the main steps first
    report["sharing"] = sharing_section(sz, t0 + 0.15 * a.budget_s)
    report["steps"] = steps_section(sz, t0 + 0.50 * a.budget_s)
    report["online"] = online_section(sz, t0 + 0.60 * a.budget_s)
    report["packs"] = sz["packs"]
    report["packing"] = packing_section(sz, t0 + 0.70 * a.budget_s)
    report["smoke"] = smoke_section(sz, deadline, scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    report["wall_s"] = time.time() - t0
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
