# What the rules share, and only that (the Snakemake workflow catalog's rules/common.smk): the
# diffrl names they use and the helper functions that turn diffrl's declarations into a rule's
# params, inputs, shell command and report entries. Included first, after the Snakefile has
# validated the config into P (validated params), MERGED (params.yaml with --config on top) and
# OVERRIDES (the --config overrides as key=value).
import shlex

from diffrl.algos import BEHAVIORS, CRITICS, OFFLINE, ONLINE, ROWS
from diffrl.dag import code_deps, command, command_fields, data_deps, offline_init_of
from diffrl.resources import job_resources
from diffrl.pipeline import (SUMMARY_OUTPUTS, bandit_file, bandit_plot_file, budget_keys, dataset_dir,
                             declared_values, eval_file, log_file, run_dir, stage_keys, summary_files, toy_file)


def overrides(stage, **wildcards):
    """The `--config` overrides of the values a job reads, passed on as `--set` so the stage uses
    exactly the values Snakemake used. Only those: this string is a param too, so an override of a
    value the job does not read (another preset's key, say) must leave it unchanged."""
    keys, budget = set(stage_keys(stage, **wildcards)), budget_keys(stage, **wildcards)

    def reads(override):
        parts = override.split("=", 1)[0].split(".")
        if parts[0] == "budgets":  # overrides are leaves: budgets.PRESET.KEY
            return parts[1:2] == [P["budget"]] and parts[2:3] != [] and parts[2] in budget
        return parts[0] in keys or (parts[0] == "budget" and bool(budget))  # the preset to read from
    return "".join(f" --set {shlex.quote(o)}" for o in OVERRIDES if reads(o))


def declared(stage, **wildcards):
    return declared_values(stage, P, MERGED, **wildcards)


def inputs(stage):
    """A rule's inputs: the code its job imports (diffrl.dag.code_deps: the stage script, the shared
    modules, and only the algorithm modules of the job's row) and the outputs of other jobs it reads."""
    def job_inputs(wc):
        w = dict(wc.items())
        init = offline_init_of(P, w["algo"]) if stage == "online_train" else ""
        return code_deps(stage, offline_init=init, **w) + data_deps(stage, P, **w)
    return job_inputs


def shell_command(stage):
    """The rule's shell command: the stage's command (diffrl.dag.COMMANDS, also dvc.yaml's) with its
    wildcards, and the `--config` overrides it reads."""
    return command(stage, **{f: f"{{wildcards.{f}}}" for f in command_fields(stage)}) + "{params.set}"


# --------------------------------------------------------------------------- the report's labels
def report_count(n, what):
    return f"{n} {what}{'' if n == 1 else 's'}"


def report_labels(kind, env):
    """The report labels of one result of `env`: budget, seeds, steps, evaluation and data of the
    rows it covers (kind: "final" for the tables and intervals, "offline" or "online" for a learning
    curve, "curves" for the curve points). They come from the validated params, so a `--config`
    override, dotted or nested, shows as the jobs ran it; the captions quote them. Strings only (the
    report sorts them as text), and no braces (the report fills wildcards into them)."""
    budget, algos = P["budgets"][P["budget"]], P["algorithms"]
    offline = kind != "online" and any(a in OFFLINE for a in algos)
    online = kind != "offline" and any(a in ONLINE for a in algos)
    cap = f", capped at {report_count(budget.max_episode_steps, 'step')}" if budget.max_episode_steps else ""
    final = f"{report_count(budget.eval_episodes, 'fresh episode')} per seed{cap}"
    steps, points = [], []
    if offline:
        eda = f" (EDA: {report_count(budget.align_steps, 'alignment step')})" if "eda" in algos else ""
        steps.append(f"offline rows {report_count(budget.offline_steps, 'gradient step')}{eda}")
        points.append(f"offline every {budget.eval_every} gradient steps")
    if online:
        steps.append(f"online rows {report_count(budget.online_steps, 'environment step')}")
        points.append(f"online every {budget.online_eval_every} environment steps")
    source = P["dataset"]
    data = (f"Minari {source.minari_ids.get(env, env)}" if source.source == "minari" else
            f"generated {source.quality}, {report_count(budget.dataset_episodes, 'episode')} of the pipeline's SAC "
            f"agent (not D4RL)")
    if kind == "online":
        o2o = [a for a in algos if a in ONLINE and offline_init_of(P, a)]
        data = "each row's own environment steps" + (f"; {', '.join(o2o)} from an offline run on {data}" if o2o else "")
    return {
        "budget": P["budget"],
        "seeds": ", ".join(map(str, P["seeds"])),
        "steps": "; ".join(steps) or "no rows of this kind",
        "evaluation": final if kind == "final" else
                      f"{'; '.join(points)}, {report_count(budget.curve_episodes, 'episode')} a point; last point {final}",
        "data": data,
    }


# summary_files() name -> (caption, subcategory, result label, rows it covers); a name not listed
# (metrics.json, read by `dvc exp show`; plots/, the per-row curves `dvc plots show` draws) stays out
# of the report
SUMMARY_REPORT = {
    "summary.csv": ("summary_csv.rst", "tables", "summary (CSV)", "final"),
    "summary.md": ("summary_md.rst", "tables", "summary and probability of improvement (Markdown)", "final"),
    "curves.csv": ("curves_csv.rst", "learning curves", "curve points (CSV)", "curves"),
    "curves.png": ("curves.rst", "learning curves", "offline rows, gradient steps", "offline"),
    "online_curves.png": ("online_curves.rst", "learning curves", "online rows, environment steps", "online"),
    "intervals.png": ("intervals.rst", "final scores", "IQM and 95% interval", "final"),
}


def summary_outputs(env):
    """summary_files(env): the same files in the same order, each result of the report wrapped in
    report() with its caption, its environment's category, a subcategory and labels."""
    out = []
    for name, path in zip(SUMMARY_OUTPUTS, summary_files(env)):
        if name not in SUMMARY_REPORT:
            out.append(directory(path) if name == "plots" else path)
            continue
        caption, subcategory, result, kind = SUMMARY_REPORT[name]
        out.append(report(path, caption=f"../report/{caption}", category="{env}", subcategory=subcategory,
                          labels=lambda wc, result=result, kind=kind: {"result": result, **report_labels(kind, wc.env)}))
    return out


def bandit_labels(name):
    """The report labels of a bandit result (toy set `name`, or every set of bandit_sets): budget,
    seeds, steps and data from the validated params, as report_labels does."""
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
