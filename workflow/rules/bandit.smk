# The 2-D bandit study: every offline algorithm (its pretraining included) on each toy set,
# one job per (toy set, algorithm) covering all seeds.

rule bandit_train:
    output: bandit_file("{name}", "{algo}")
    input: LIB, "stages/bandit.py"
    params:
        declared=lambda wc: declared("bandit_train", algo=wc.algo),
        set=lambda wc: overrides("bandit_train", algo=wc.algo),
    log: log_file("bandit_train", "{name}", "{algo}")
    threads: 1
    resources: **job_resources("bandit_train", P)
    shell: "python stages/bandit.py bandit_train --name {wildcards.name} --algo {wildcards.algo}{params.set}"


rule bandit_plot:
    output: bandit_plot_file("{name}")
    input: LIB, "stages/bandit.py", lambda wc: [bandit_file(wc.name, a) for a in OFFLINE_ROWS]
    params:
        declared=declared("bandit_plot"),
        set=overrides("bandit_plot"),
    log: log_file("bandit_plot", "{name}")
    threads: 1
    resources: **job_resources("bandit_plot", P)
    shell: "python stages/bandit.py bandit_plot --name {wildcards.name}{params.set}"


rule bandit_summary:
    output: "results/bandit_summary.csv"
    input: LIB, "stages/bandit.py", [bandit_file(n, a) for n in P["bandit_sets"] for a in OFFLINE_ROWS]
    params:
        declared=declared("bandit_summary"),
        set=overrides("bandit_summary"),
    log: log_file("bandit_summary", "all")
    threads: 1
    resources: **job_resources("bandit_summary", P)
    shell: "python stages/bandit.py bandit_summary{params.set}"
