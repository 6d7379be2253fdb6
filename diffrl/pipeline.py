"""The stage registry: what each stage reads from params.yaml and where its outputs live.

The Snakefile and dvc.yaml are two front ends over these stages. Each stage declares the
params.yaml keys it reads; Snakemake passes exactly those through `params:` and dvc.yaml lists
them under the stage's `params:`. tests/test_pipeline_graph.py checks that both graphs agree.
"""
from __future__ import annotations

import json

BUDGET_KEYS = ["budget", "budgets"]
RUN_KEYS = BUDGET_KEYS + ["device", "deterministic"]

# stage -> params.yaml keys it reads (a section name means the whole section). A `{wildcard}`
# stands for the section the job trains: critic_pretrain with critic=dtql_critic reads dtql_critic;
# `{algo}` is the row's section (diffrl.algos.section_of: the online `sac` row reads sac_online);
# `{guidance}` is the top-level tfg_lambda for the guided online variants and nothing for the others.
STAGES: dict[str, list[str]] = {
    "dataset": RUN_KEYS + ["dataset", "sac"],
    "toy_dataset": BUDGET_KEYS,
    "critic_pretrain": RUN_KEYS + ["{critic}"],
    "behavior_pretrain": RUN_KEYS + ["{behavior}"],
    "offline_train": RUN_KEYS + ["{algo}"],
    "online_train": RUN_KEYS + ["{algo}", "{guidance}"],
    "evaluate": RUN_KEYS,
    "summary": ["seeds", "algorithms", "stats", "budget", "budgets"],  # budgets: below_regime marks
    "bandit_train": RUN_KEYS + ["seeds", "{algo_pretrained}", "{algo}"],
    "bandit_plot": ["seeds"],
    "bandit_summary": ["seeds", "bandit_sets"],
}


def stage_keys(stage: str, **wildcards) -> list[str]:
    """The keys of one job; `{algo_pretrained}` is the critic and behaviour sections of DTQL/EDA."""
    from diffrl.algos import GUIDED, PRETRAINED, section_of
    keys = []
    for k in STAGES[stage]:
        if k == "{algo_pretrained}":
            keys += list(PRETRAINED.get(wildcards.get("algo"), ()))
        elif k == "{guidance}":
            keys += ["tfg_lambda"] if wildcards.get("algo") in GUIDED else []
        elif k == "{algo}" and stage == "online_train":
            keys.append(section_of(wildcards["algo"]))
        else:
            keys.append(k.format(**wildcards))
    return keys


def dataset_dir(env: str) -> str:
    return f"data/{env}/dataset"


def toy_file(name: str) -> str:
    return f"data/toy/{name}.npz"


def run_dir(env: str, algo: str, seed) -> str:
    return f"runs/{env}/{algo}/seed{seed}"


def eval_file(env: str, algo: str, seed) -> str:
    return f"runs/{env}/eval/{algo}/seed{seed}.json"


def bandit_file(name: str, algo: str) -> str:
    return f"runs/bandit/{name}/{algo}.npz"


def bandit_plot_file(name: str) -> str:
    return f"results/bandit_{name}.png"


def log_file(stage: str, *parts) -> str:
    return "logs/" + "/".join([stage, *map(str, parts)]) + ".log"


def resume_file(section: str, env: str, seed) -> str:
    """Resume checkpoints live outside the stage outputs, so a failed job's progress survives."""
    return f"runs/.resume/{env}/{section}/seed{seed}.pt"


SUMMARY_OUTPUTS = ("summary.csv", "summary.md", "metrics.json", "curves.csv", "curves.png", "online_curves.png",
                   "intervals.png")


def summary_files(env: str) -> list[str]:
    return [f"results/{env}_{name}" for name in SUMMARY_OUTPUTS]


def declared_values(stage: str, validated: dict, raw: dict, **wildcards) -> str:
    """The values a stage reads, as canonical JSON (Snakemake reruns a job when this changes).

    For `budgets` only the selected preset counts, since that is all a stage reads of it.
    """
    out = {}
    for key in stage_keys(stage, **wildcards):
        if key == "budgets":
            out[key] = raw.get("budgets", {}).get(validated["budget"], {})
        else:
            out[key] = raw.get(key)
    return json.dumps(out, sort_keys=True, default=str)
