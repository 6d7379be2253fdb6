# Training, cached per seed: critic pretraining (IQL losses: iql, dtql_critic, eda_critic),
# behaviour pretraining (bc, dtql_behavior, eda_behavior) and offline training (the
# Diffusion-QL variants, and DTQL and EDA from their own pretrained critic and behaviour).
# Inputs: the dataset, the pretraining runs a row starts from, and the code of its own algorithm.

rule critic_pretrain:
    output: directory(run_dir("{env}", "{critic}", "{seed}"))
    input: inputs("critic_pretrain")
    params:
        declared=lambda wc: declared("critic_pretrain", critic=wc.critic),
        set=lambda wc: overrides("critic_pretrain", critic=wc.critic),
    log: log_file("critic_pretrain", "{env}", "{critic}", "seed{seed}")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("critic_pretrain", P)
    shell: shell_command("critic_pretrain")


rule behavior_pretrain:
    output: directory(run_dir("{env}", "{behavior}", "{seed}"))
    input: inputs("behavior_pretrain")
    params:
        declared=lambda wc: declared("behavior_pretrain", behavior=wc.behavior),
        set=lambda wc: overrides("behavior_pretrain", behavior=wc.behavior),
    log: log_file("behavior_pretrain", "{env}", "{behavior}", "seed{seed}")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("behavior_pretrain", P)
    shell: shell_command("behavior_pretrain")


rule offline_train:
    output: directory(run_dir("{env}", "{algo}", "{seed}"))
    input: inputs("offline_train")
    params:
        declared=lambda wc: declared("offline_train", algo=wc.algo),
        set=lambda wc: overrides("offline_train", algo=wc.algo),
    log: log_file("offline_train", "{env}", "{algo}", "seed{seed}")
    wildcard_constraints: algo="|".join(OFFLINE)
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("offline_train", P)
    shell: shell_command("offline_train")
