# Multi-seed statistics and the result tables users read. `snakemake --report report.html` (with
# the targets and --config of the run) gathers them and the bandit study's results into one HTML
# page: one category per environment, each result with its caption (workflow/report/) and labels
# (summary_outputs and report_labels: common.smk).

rule summary:
    output: summary_outputs("{env}")
    input: inputs("summary")
    params:
        declared=declared("summary"),
        set=overrides("summary"),
    log: log_file("summary", "{env}")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("summary", P)
    shell: shell_command("summary")


# The report's front page: a global directive, here rather than in the Snakefile (paths resolve
# relative to this file)
report: "../report/workflow.rst"
