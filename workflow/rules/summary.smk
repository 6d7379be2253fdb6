# Multi-seed statistics and the result tables users read.

rule summary:
    output: summary_files("{env}")
    input: inputs("summary")
    params:
        declared=declared("summary"),
        set=overrides("summary"),
    log: log_file("summary", "{env}")
    threads: 1
    resources: **job_resources("summary", P)
    shell: shell_command("summary")
