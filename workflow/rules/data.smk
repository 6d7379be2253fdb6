# Data: offline datasets (generated locally with SAC, or fetched from Minari) and 2-D toys.

rule dataset:
    output: directory(dataset_dir("{env}"))
    input: LIB, "stages/dataset.py"
    params:
        declared=declared("dataset"),
        set=overrides("dataset"),
    log: log_file("dataset", "{env}")
    threads: 1
    resources: **job_resources("dataset", P)
    shell: "python stages/dataset.py --env {wildcards.env}{params.set}"


rule toy_dataset:
    output: toy_file("{name}")
    input: LIB, "stages/toy_dataset.py"
    params:
        declared=declared("toy_dataset"),
        set=overrides("toy_dataset"),
    log: log_file("toy_dataset", "{name}")
    threads: 1
    resources: **job_resources("toy_dataset", P)
    shell: "python stages/toy_dataset.py --name {wildcards.name}{params.set}"
