# Final evaluation of every trained row in the real environment (fresh episode seeds).

rule evaluate:
    output: eval_file("{env}", "{algo}", "{seed}")
    input: inputs("evaluate")
    params:
        declared=declared("evaluate"),
        set=overrides("evaluate"),
    log: log_file("evaluate", "{env}", "{algo}", "seed{seed}")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("evaluate", P)
    shell: shell_command("evaluate")
