# The pipeline graph for Snakemake. params.yaml is the single source of truth: every value a
# stage reads reaches it through `params:` (so changing it reruns exactly that stage and what
# depends on it), and each job's inputs are the code it imports (diffrl/dag.py) and the outputs
# it reads. dvc.yaml is generated from the same declarations (`python -m diffrl.dag dvc`).
#   snakemake --cores 2 results/halfcheetah_summary.csv --config budget=smoke
import shlex
import sys

sys.path.insert(0, workflow.basedir)

from diffrl import config as params_lib
from diffrl.algos import BEHAVIORS, CRITICS, OFFLINE, ONLINE, ROWS
from diffrl.dag import code_deps, command, command_fields, data_deps, offline_init_of
from diffrl.resources import job_resources
from diffrl.pipeline import (bandit_file, bandit_plot_file, budget_keys, dataset_dir, declared_values, eval_file,
                             log_file, run_dir, stage_keys, summary_files, toy_file)

configfile: "params.yaml"

try:
    MERGED, OVERRIDES = params_lib.snakemake_config(config)
    P = params_lib.validate(MERGED)
except params_lib.ConfigError as e:
    # one line, before any job is scheduled or any output touched
    raise SystemExit(f"error: {e}")



def overrides(stage, **wildcards):
    """The `--config` overrides of the values a job reads, passed on as `--set` so the stage uses
    exactly the values Snakemake used. Only those: this string is a param too, so an override of a
    value the job does not read (another preset's key, say) must leave it unchanged."""
    keys, budget = set(stage_keys(stage, **wildcards)), budget_keys(stage, **wildcards)

    def reads(override):
        parts = override.split("=", 1)[0].split(".")
        if parts[0] == "budgets":  # overrides are leaves: budgets.PRESET.KEY
            return parts[1:2] == [P["budget"]] and parts[2:3] != [] and parts[2] in budget
        return parts[0] in keys or (parts[0] == "budget" and bool(budget))  # the preset to read from
    return "".join(f" --set {shlex.quote(o)}" for o in OVERRIDES if reads(o))


def declared(stage, **wildcards):
    return declared_values(stage, P, MERGED, **wildcards)


def inputs(stage):
    """A rule's inputs: the code its job imports (diffrl.dag.code_deps: the stage script, the shared
    modules, and only the algorithm modules of the job's row) and the outputs of other jobs it reads."""
    def job_inputs(wc):
        w = dict(wc.items())
        init = offline_init_of(P, w["algo"]) if stage == "online_train" else ""
        return code_deps(stage, offline_init=init, **w) + data_deps(stage, P, **w)
    return job_inputs


def shell_command(stage):
    """The rule's shell command: the stage's command (diffrl.dag.COMMANDS, also dvc.yaml's) with its
    wildcards, and the `--config` overrides it reads."""
    return command(stage, **{f: f"{{wildcards.{f}}}" for f in command_fields(stage)}) + "{params.set}"


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


onstart:
    # the cost plan (diffrl.plan), after the DAG is known and before the first job; it stops the run
    # here when the estimate exceeds max_hours
    from diffrl.plan import on_snakemake_start
    on_snakemake_start(workflow, P, OVERRIDES)
