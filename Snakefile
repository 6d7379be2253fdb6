# The pipeline graph for Snakemake. params.yaml is the single source of truth: every value a
# stage reads reaches it through `params:` (so changing it reruns exactly that stage and what
# depends on it), and each job's inputs are the code it imports (diffrl/dag.py) and the outputs
# it reads. dvc.yaml is generated from the same declarations (`python -m diffrl.dag dvc`), the config's
# JSON Schema from the config dataclasses (`python -m diffrl.schema`); the helpers the rules share are
# in workflow/rules/common.smk.
#   snakemake --cores 2 results/halfcheetah_summary.csv --config budget=smoke
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from diffrl import config as params_lib
from diffrl import schema as schema_lib
from diffrl.scheduler import clear_stale_lock, record_owner

if workflow.is_main_process:
    clear_stale_lock()  # the lock of a killed run, when safe (diffrl/scheduler.py), before this run takes its own

configfile: "params.yaml"

try:
    MERGED, OVERRIDES = params_lib.snakemake_config(config)
    P = params_lib.validate(MERGED)
except params_lib.ConfigError as e:
    # one line, before any job is scheduled or any output touched
    raise SystemExit(f"error: {e}")
try:
    # then the JSON Schema generated from the same dataclasses (the one editors read), on the merged
    # config with the numbers YAML leaves as strings ('1e-4') read as numbers, as diffrl reads them;
    # after the check above it fails only when the schema is stale
    validate(schema_lib.numbers(MERGED), "workflow/schemas/params.schema.json", set_default=False)
except WorkflowError as e:
    raise SystemExit(f"error: {schema_lib.stale(e)}")

include: "workflow/rules/common.smk"


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
    # this run holds the lock now: record it, so that a rerun after a SIGKILL can tell the lock is
    # stale (diffrl/scheduler.py); then the cost plan (diffrl.plan), after the DAG is known and
    # before the first job, which stops the run here when the estimate exceeds max_hours
    from diffrl.plan import on_snakemake_start
    record_owner()
    on_snakemake_start(workflow, P, OVERRIDES)
