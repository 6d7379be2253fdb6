# Pretraining: the IQL critic (row `iql`) and the diffusion behaviour model (row `bc`), cached
# per seed; later stages load their checkpoints.

rule critic_pretrain:
    output: directory(run_dir("{env}", "iql", "{seed}"))
    input: LIB, "stages/critic_pretrain.py", dataset_dir("{env}")
    params: declared=declared("critic_pretrain")
    log: log_file("critic_pretrain", "{env}", "seed{seed}")
    threads: 1
    resources: gpu=GPU
    shell: "python stages/critic_pretrain.py --env {wildcards.env} --seed {wildcards.seed}" + overrides("critic_pretrain")


rule behavior_pretrain:
    output: directory(run_dir("{env}", "bc", "{seed}"))
    input: LIB, "stages/behavior_pretrain.py", dataset_dir("{env}")
    params: declared=declared("behavior_pretrain")
    log: log_file("behavior_pretrain", "{env}", "seed{seed}")
    threads: 1
    resources: gpu=GPU
    shell: "python stages/behavior_pretrain.py --env {wildcards.env} --seed {wildcards.seed}" + overrides("behavior_pretrain")
