# The 2-D bandit study: every offline algorithm (its pretraining included) on each toy set,
# one job per (toy set, algorithm) covering all seeds. Its figures and table are results of the
# report (`snakemake --report report.html`), in the category "bandit study", labelled by
# bandit_labels (common.smk).

rule bandit_train:
    output: bandit_file("{name}", "{algo}")
    input: inputs("bandit_train")
    params:
        declared=lambda wc: declared("bandit_train", algo=wc.algo),
        set=lambda wc: overrides("bandit_train", algo=wc.algo),
    log: log_file("bandit_train", "{name}", "{algo}")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("bandit_train", P)
    shell: shell_command("bandit_train")


rule bandit_plot:
    output:
        report(bandit_plot_file("{name}"), caption="../report/bandit_plot.rst", category="bandit study",
               subcategory="policy samples", labels=bandit_plot_labels),
    input: inputs("bandit_plot")
    params:
        declared=declared("bandit_plot"),
        set=overrides("bandit_plot"),
    log: log_file("bandit_plot", "{name}")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("bandit_plot", P)
    shell: shell_command("bandit_plot")


rule bandit_summary:
    output:
        report("results/bandit_summary.csv", caption="../report/bandit_summary.rst", category="bandit study",
               subcategory="table", labels=bandit_labels(", ".join(P["bandit_sets"]))),
    input: inputs("bandit_summary")
    params:
        declared=declared("bandit_summary"),
        set=overrides("bandit_summary"),
    log: log_file("bandit_summary", "all")
    conda: "../envs/diffrl.yaml"
    threads: 1
    resources: **job_resources("bandit_summary", P)
    shell: shell_command("bandit_summary")
