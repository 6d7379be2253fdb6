# Multi-seed statistics and the result tables users read.

rule summary:
    output: summary_files("{env}")
    input:
        LIB, "stages/summary.py",
        lambda wc: [eval_file(wc.env, a, s) for a in P["algorithms"] for s in P["seeds"]],
    params:
        declared=declared("summary"),
        set=overrides("summary"),
    log: log_file("summary", "{env}")
    threads: 1
    resources: **job_resources("summary", P)
    shell: "python stages/summary.py --env {wildcards.env}{params.set}"
