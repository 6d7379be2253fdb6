# Multi-seed statistics and the result tables users read. `snakemake --report report.html` (with
# the targets and --config of the run) gathers them and the bandit study's results into one HTML
# page: one category per environment, each result with its caption (workflow/report/) and labels.
from diffrl.pipeline import SUMMARY_OUTPUTS


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


rule summary:
    output: summary_outputs("{env}")
    input: inputs("summary")
    params:
        declared=declared("summary"),
        set=overrides("summary"),
    log: log_file("summary", "{env}")
    threads: 1
    resources: **job_resources("summary", P)
    shell: shell_command("summary")


# The report's front page: a global directive, here rather than in the Snakefile (paths resolve
# relative to this file)
report: "../report/workflow.rst"
