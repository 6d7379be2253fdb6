# Final evaluation of every row in the real environment (fresh episode seeds). A tilted row (bc_tilt, ...)
# evaluates its base row's run under its tilt: it reads its own section, so changing its tilt reruns
# exactly its evaluations and the table.

rule evaluate:
    output: eval_file("{env}", "{algo}", "{seed}")
    input: inputs("evaluate")
    params:
        declared=lambda wc: declared("evaluate", algo=wc.algo),
        set=lambda wc: overrides("evaluate", algo=wc.algo),
    log: log_file("evaluate", "{env}", "{algo}", "seed{seed}")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("evaluate", P)
    shell: shell_command("evaluate")
