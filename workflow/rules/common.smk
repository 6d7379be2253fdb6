# What the rules share, and only that (the Snakemake workflow catalog's rules/common.smk): the
# diffrl names they use and the helper functions that turn a stage's record (diffrl.pipeline.STAGES)
# into its rule's outputs, params, inputs, log, shell command and report entries. Included first,
# after the Snakefile has validated the config into P (validated params), MERGED (params.yaml with
# --config on top) and OVERRIDES (the --config overrides as key=value).
import shlex
from pathlib import Path

import diffrl.algos
from diffrl.algos import BEHAVIORS, CRITICS, OFFLINE, ONLINE, PRETRAINED, REGISTRY, ROWS
from diffrl.dag import code_deps, command, command_fields, data_deps, default_target, job_init, row_wildcards
from diffrl.resources import job_resources
from diffrl.tasks import in_scope
from diffrl.tasks import parse as parse_task
from diffrl.pipeline import (BANDIT_SUMMARY, STAGES, SUMMARY_OUTPUTS, bandit_plot_file, budget_keys,
                             declared_values, log_file, offline_init_of, stage_keys, summary_files)


def overrides(stage, **wildcards):
    """The `--config` overrides of the values a job reads, passed on as `--set` so the stage uses
    exactly the values Snakemake used. Only those: this string is a param too, so an override of a
    value the job does not read (another preset's key, say) must leave it unchanged."""
    keys, budget = set(stage_keys(stage, **wildcards)), budget_keys(stage, **wildcards)

    def reads(override):
        parts = override.split("=", 1)[0].split(".")
        if parts[0] == "budgets":  # overrides are leaves: budgets.PRESET.KEY
            return parts[1:2] == [P["budget"]] and parts[2:3] != [] and parts[2] in budget
        if parts[0] == "tasks" and "task" in wildcards:  # tasks.TASK.SECTION...: its own task's changes
            return parts[1:2] == [parse_task(wildcards["task"]).name] and parts[2:3] != [] and parts[2] in keys
        return parts[0] in keys or (parts[0] == "budget" and bool(budget))  # the preset to read from
    return "".join(f" --set {shlex.quote(o)}" for o in OVERRIDES if reads(o))


def job_wildcards(stage, wc):
    """What a job's declared values depend on: its row wildcard and its task (what the task changes)."""
    w = dict(wc.items())
    return {**row_wildcards(stage, w), **({"task": w["task"]} if "task" in w else {})}


def declared(stage):
    """The rule's `params.declared`: the values its job reads (diffrl.pipeline.declared_values)."""
    return lambda wc: declared_values(stage, P, MERGED, **job_wildcards(stage, wc))


def override_param(stage):
    """The rule's `params.set`: overrides(...) of its job."""
    return lambda wc: overrides(stage, **job_wildcards(stage, wc))


def inputs(stage):
    """A rule's inputs: the code its job imports (diffrl.dag.code_deps: the stage script, the shared
    modules, and only the algorithm modules of the job's row) and the outputs of other jobs it reads."""
    def job_inputs(wc):
        w = dict(wc.items())
        init = job_init(P, stage, row_wildcards(stage, w))
        return code_deps(stage, offline_init=init, **w) + data_deps(stage, P, **w)
    return job_inputs


def job_command(stage):
    """The rule's `params.cmd`: the stage's command (diffrl.pipeline.STAGES, also dvc.yaml's) with its
    job's wildcards. A param rather than the `shell:` text itself: Snakemake evaluates a rule's
    `shell:` expression again when the job runs, and by then the loop variable of stages.smk names
    the last stage."""
    return lambda wc: command(stage, **{f: wc[f] for f in command_fields(stage)})


def job_log(stage):
    """logs/{stage}/...log: its axes (seed last, as seed{seed}) around its row, or `all` for none."""
    st = STAGES[stage]
    parts = [f"{{{a}}}" for a in st.axes if a != "seed"] + ([f"{{{st.row}}}"] if st.row else [])
    parts += ["seed{seed}"] if "seed" in st.axes else []
    return log_file(stage, *(parts or ["all"]))


def row_constraint(stage):
    """The values the rule's row wildcard takes (its stage's `sections`), so that stages writing the
    same path pattern (runs/{task}/{algo}/seed{seed}) each match only their own rows."""
    st = STAGES[stage]
    return {st.row: "|".join(getattr(diffrl.algos, st.sections))} if st.row else {}


def rule_outputs(stage):
    """The stage's outputs for its rule: a path without a suffix is a folder (directory()), and a
    result of the report (REPORT) is wrapped in report() with its caption, category and labels."""
    out = []
    for template in STAGES[stage].outputs:
        if template in REPORT:
            caption, category, subcategory, labels = REPORT[template]
            out.append(report(template, caption=f"../report/{caption}", category=category,
                              subcategory=subcategory, labels=labels))
        else:
            out.append(directory(template) if not Path(template).suffix else template)
    return out


# --------------------------------------------------------------------------- the report's labels
def report_count(n, what):
    return f"{n} {what}{'' if n == 1 else 's'}"


def report_labels(kind, scope):
    """The report labels of one result of a summary `scope` (a task, an environment's tasks, the
    suite): budget, seeds, steps, evaluation and data of the
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
        # a selected offline row whose final policy has its own step count (its registry entry's steps_label)
        own = "".join(f" ({e.title or a}: {report_count(getattr(budget, e.steps_key), f'{e.steps_label} step')})"
                      for a in algos if a in OFFLINE for e in [REGISTRY[a]] if e.steps_label)
        steps.append(f"offline rows {report_count(budget.offline_steps, 'gradient step')}{own}")
        points.append(f"offline every {budget.eval_every} gradient steps")
    if online:
        steps.append(f"online rows {report_count(budget.online_steps, 'environment step')}")
        points.append(f"online every {budget.online_eval_every} environment steps")
    tasks = [parse_task(t) for t in in_scope(scope, P["tasks"])]
    minari = [t.name for t in tasks if t.minari_id]
    generated = [t.name for t in tasks if not t.minari_id]
    data = "; ".join(([f"Minari {', '.join(minari)}"] if minari else []) +
                     ([f"generated {', '.join(generated)}, {report_count(budget.dataset_episodes, 'episode')} per "
                       f"policy of the pipeline's SAC agent (not D4RL)"] if generated else []))
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


def summary_labels(result, kind):
    return lambda wc: {"result": result, **report_labels(kind, wc.scope)}


def scope_category(wc):
    """A summary's report category: its scope, the suite's named so that it sorts first."""
    return SUITE_CATEGORY if wc.scope == "suite" else wc.scope


SUITE_CATEGORY = "all tasks (suite)"


def bandit_labels(name):
    """The report labels of a bandit result (toy set `name`, or every set of bandit_sets): budget,
    seeds, steps and data from the validated params, as report_labels does."""
    budget = P["budgets"][P["budget"]]
    # the rows whose sections keep their own step counts (their registry entries' toy_steps_key)
    own = []
    for row in OFFLINE:
        parts = [f"{getattr(budget, REGISTRY[s].toy_steps_key)} {REGISTRY[s].steps_label}"
                 for s in (*PRETRAINED.get(row, ()), row) if REGISTRY[s].toy_steps_key != "toy_steps"]
        own += [f"{REGISTRY[row].title or row}: {', '.join(parts)}"] if parts else []
    return {
        "toy set": name,
        "budget": P["budget"],
        "seeds": ", ".join(map(str, P["seeds"])),
        "steps": f"{budget.toy_steps} gradient steps per stage" + (f" ({'; '.join(own)})" if own else ""),
        "data": f"{budget.toy_samples} samples per toy set",
    }


def bandit_plot_labels(wildcards):
    return bandit_labels(wildcards.name)


# summary_files() name -> (caption, subcategory, result label, rows it covers); a name not listed
# (metrics.json, read by `dvc exp show`; plots/, the per-row curves `dvc plots show` draws) stays out
# of the report
SUMMARY_REPORT = {
    "table.md": ("table_md.rst", "1 table and profile", "the papers' table (Markdown)", "final"),
    "profile.png": ("profile.rst", "1 table and profile", "performance profile", "final"),
    "summary.csv": ("summary_csv.rst", "tables", "summary (CSV)", "final"),
    "summary.md": ("summary_md.rst", "tables", "summary and probability of improvement (Markdown)", "final"),
    "curves.csv": ("curves_csv.rst", "learning curves", "curve points (CSV)", "curves"),
    "curves.png": ("curves.rst", "learning curves", "offline rows, gradient steps", "offline"),
    "online_curves.png": ("online_curves.rst", "learning curves", "online rows, environment steps", "online"),
    "intervals.png": ("intervals.rst", "final scores", "IQM and 95% interval", "final"),
}
# the report's results: output path template -> (caption, category, subcategory, labels)
REPORT = {
    **{path: (caption, scope_category, subcategory, summary_labels(result, kind))
       for name, path in zip(SUMMARY_OUTPUTS, summary_files("{scope}")) if name in SUMMARY_REPORT
       for caption, subcategory, result, kind in [SUMMARY_REPORT[name]]},
    bandit_plot_file("{name}"): ("bandit_plot.rst", "bandit study", "policy samples", bandit_plot_labels),
    BANDIT_SUMMARY: ("bandit_summary.rst", "bandit study", "table", bandit_labels(", ".join(P["bandit_sets"]))),
}
