"""The stage registry: what each stage reads from params.yaml and where its outputs live.

The Snakefile and dvc.yaml are two front ends over these stages. Each stage declares the
params.yaml keys it reads; Snakemake passes exactly those through `params:` and dvc.yaml lists
them under the stage's `params:`. tests/test_pipeline_graph.py checks that both graphs agree.
"""
from __future__ import annotations

import json

BUDGET_KEYS = ["budget", "budgets"]
RUN_KEYS = BUDGET_KEYS + ["device", "deterministic"]

# stage -> params.yaml keys it reads (a section name means the whole section)
STAGES: dict[str, list[str]] = {
    "dataset": RUN_KEYS + ["dataset", "sac"],
    "toy_dataset": BUDGET_KEYS,
    "critic_pretrain": RUN_KEYS + ["iql"],
    "behavior_pretrain": RUN_KEYS + ["bc"],
    "evaluate": RUN_KEYS,
    "summary": ["seeds", "algorithms", "stats"],
}

# which training stage produces the checkpoint of each summary row
ROW_STAGE = {"bc": "behavior_pretrain", "iql": "critic_pretrain"}


def dataset_dir(env: str) -> str:
    return f"data/{env}/dataset"


def toy_file(name: str) -> str:
    return f"data/toy/{name}.npz"


def run_dir(env: str, algo: str, seed) -> str:
    return f"runs/{env}/{algo}/seed{seed}"


def eval_file(env: str, algo: str, seed) -> str:
    return f"runs/{env}/eval/{algo}/seed{seed}.json"


def log_file(stage: str, *parts) -> str:
    return "logs/" + "/".join([stage, *map(str, parts)]) + ".log"


def resume_file(stage: str, env: str, seed) -> str:
    """Resume checkpoints live outside the stage outputs, so a failed job's progress survives."""
    return f"runs/.resume/{stage}/{env}/seed{seed}.pt"


SUMMARY_OUTPUTS = ("summary.csv", "summary.md", "metrics.json", "curves.csv", "curves.png", "intervals.png")


def summary_files(env: str) -> list[str]:
    return [f"results/{env}_{name}" for name in SUMMARY_OUTPUTS]


def declared_values(stage: str, validated: dict, raw: dict) -> str:
    """The values a stage reads, as canonical JSON (Snakemake reruns a job when this changes).

    For `budgets` only the selected preset counts, since that is all a stage reads of it.
    """
    out = {}
    for key in STAGES[stage]:
        if key == "budgets":
            out[key] = raw.get("budgets", {}).get(validated["budget"], {})
        else:
            out[key] = raw.get(key)
    return json.dumps(out, sort_keys=True, default=str)
