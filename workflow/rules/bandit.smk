# The 2-D bandit study: every offline algorithm (its pretraining included) on each toy set,
# one job per (toy set, algorithm) covering all seeds. Its figures and table are results of the
# report (`snakemake --report report.html`), in the category "bandit study".


def bandit_labels(name):
    """The report labels of a bandit result (toy set `name`, or every set of bandit_sets): budget,
    seeds, steps and data from the validated params, as report_labels (summary.smk) does."""
    budget = P["budgets"][P["budget"]]
    return {
        "toy set": name,
        "budget": P["budget"],
        "seeds": ", ".join(map(str, P["seeds"])),
        "steps": f"{budget.toy_steps} gradient steps per stage (EDA: {budget.energy_behavior_steps} energy "
                 f"behaviour, {budget.align_steps} alignment)",
        "data": f"{budget.toy_samples} samples per toy set",
    }


def bandit_plot_labels(wildcards):
    return bandit_labels(wildcards.name)


rule bandit_train:
    output: bandit_file("{name}", "{algo}")
    input: inputs("bandit_train")
    params:
        declared=lambda wc: declared("bandit_train", algo=wc.algo),
        set=lambda wc: overrides("bandit_train", algo=wc.algo),
    log: log_file("bandit_train", "{name}", "{algo}")
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
    threads: 1
    resources: **job_resources("bandit_summary", P)
    shell: shell_command("bandit_summary")
