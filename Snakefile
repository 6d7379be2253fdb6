# The pipeline graph for Snakemake. params.yaml is the single source of truth: every value a
# stage reads reaches it through `params:` (so changing it reruns exactly that stage and what
# depends on it), and the same stages, commands, inputs and outputs are declared in dvc.yaml.
#   snakemake --cores 2 results/halfcheetah_summary.csv --config budget=smoke
import shlex
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from diffrl import config as params_lib
from diffrl.algos import BEHAVIORS, CRITICS, OFFLINE, OFFLINE_ROWS, ONLINE, PRETRAINED, ROWS
from diffrl.resources import job_resources
from diffrl.pipeline import (bandit_file, bandit_plot_file, dataset_dir, declared_values, eval_file, log_file,
                             run_dir, stage_keys, summary_files, toy_file)

configfile: "params.yaml"

try:
    MERGED, OVERRIDES = params_lib.snakemake_config(config)
    P = params_lib.validate(MERGED)
except params_lib.ConfigError as e:
    # one line, before any job is scheduled or any output touched
    raise SystemExit(f"error: {e}")



def overrides(stage, **wildcards):
    """The `--config` overrides of the keys a stage reads, passed on as `--set` so the stage uses
    exactly the values Snakemake used (and other stages' commands stay unchanged)."""
    keys = set(stage_keys(stage, **wildcards))
    return "".join(f" --set {shlex.quote(o)}" for o in OVERRIDES if o.split("=", 1)[0].split(".")[0] in keys)
# Library code is an input of every stage that runs it: a code change reruns those stages.
LIB = sorted(str(p) for p in Path(workflow.basedir, "diffrl").rglob("*.py"))
# (diffrl/resources.py only sizes cluster requests: changing it reruns nothing; .dvcignore says the same)
LIB = [str(Path(p).relative_to(workflow.basedir)) for p in LIB if not p.endswith("diffrl/resources.py")]


def declared(stage, **wildcards):
    return declared_values(stage, P, MERGED, **wildcards)


wildcard_constraints:
    env="|".join(params_lib.ENV_NAMES),
    seed=r"\d+",
    algo="|".join(ROWS),
    critic="|".join(CRITICS),
    behavior="|".join(BEHAVIORS),
    name=r"[A-Za-z0-9]+",

include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/online.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/bandit.smk"


rule all:
    input:
        [f for env in P["envs"] for f in summary_files(env)],
        [toy_file(n) for n in P["toy_sets"]],
        [bandit_plot_file(n) for n in P["bandit_sets"]],
        "results/bandit_summary.csv",
    default_target: True
