# One rule per stage of diffrl.pipeline.STAGES, in its order, everything taken from the stage's record:
# its outputs (folders as directory(), the report's results in report(): common.smk), its inputs (the
# code its job imports and the outputs of other jobs it reads), the values it reads as `params:` (so
# changing one reruns exactly the jobs that read it), its log, its cluster resources and its command.
# A stage with a row wildcard (the section it trains or evaluates) matches only its own rows.

for _stage in STAGES:
    rule:
        name: _stage
        output: rule_outputs(_stage)
        input: inputs(_stage)
        params:
            declared=declared(_stage),
            set=override_param(_stage),
            cmd=job_command(_stage),
        log: job_log(_stage)
        wildcard_constraints: **row_constraint(_stage)
        conda: "../envs/diffrl.yaml"
        threads: 1
        resources: **job_resources(_stage, P)
        shell: "{params.cmd}{params.set}"  # its command and the `--config` overrides it reads


# The report's front page: a global directive, here rather than in the Snakefile (paths resolve
# relative to this file)
report: "../report/workflow.rst"
