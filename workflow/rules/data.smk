# Data: offline datasets (generated locally with SAC, or fetched from Minari) and 2-D toys.

rule dataset:
    output: directory(dataset_dir("{env}"))
    input: inputs("dataset")
    params:
        declared=declared("dataset"),
        set=overrides("dataset"),
    log: log_file("dataset", "{env}")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("dataset", P)
    shell: shell_command("dataset")


rule toy_dataset:
    output: toy_file("{name}")
    input: inputs("toy_dataset")
    params:
        declared=declared("toy_dataset"),
        set=overrides("toy_dataset"),
    log: log_file("toy_dataset", "{name}")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("toy_dataset", P)
    shell: shell_command("toy_dataset")
