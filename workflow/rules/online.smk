# Online RL, cached per seed: the SAC baseline and the SDAC/DPMD variants, trained in the
# environment. The guided variants also read the top-level tfg_lambda (so changing it reruns
# exactly them); an offline-to-online row starts from the offline run named by its offline_init.

rule online_train:
    output: directory(run_dir("{env}", "{algo}", "{seed}"))
    input: inputs("online_train")
    params:
        declared=lambda wc: declared("online_train", algo=wc.algo),
        set=lambda wc: overrides("online_train", algo=wc.algo),
    log: log_file("online_train", "{env}", "{algo}", "seed{seed}")
    wildcard_constraints: algo="|".join(ONLINE)
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("online_train", P)
    shell: shell_command("online_train")
