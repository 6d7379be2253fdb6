"""The job graph both front ends are built from: each job's command, code and data dependencies.

Code dependencies are computed, not listed: a job depends on its stage script and on the diffrl
modules that script imports (module-level and function-level `import`/`from` statements, read
with ast). A stage that dispatches on a row (training, evaluation, the bandit study) reaches the
algorithm modules only through the registry (diffrl.algos imports them on first use), so its
dependencies are the script's closure without any algorithm module, plus the closure of the
modules of the sections the row runs: editing diffrl/algos/dpmd.py reruns the online rows and
their evaluations, not the dataset or the offline rows. diffrl/resources.py only sizes cluster
requests and is never a dependency.

Both front ends are built from the stage records (diffrl.pipeline.STAGES): the Snakefile takes its
rules' inputs and shell commands from here, and dvc.yaml is generated from the same records:
    python -m diffrl.params --regenerate                 # dvc.yaml with every other generated file
    python -m diffrl.dag deps offline_train algo=dtql     # one job's code dependencies
Stage scripts never import this module, so editing it reruns nothing.
"""
from __future__ import annotations

import ast
import functools
import string
import sys
from pathlib import Path

from diffrl.pipeline import (AXIS_SOURCES, STAGES, Job, axis_values, budget_keys, offline_init_of, row_curve_file,
                             stage_keys, stage_of)

ROOT = Path(__file__).resolve().parents[1]
NEVER_DEPS = {"diffrl/resources.py"}  # sizes cluster requests only: changing it must rerun nothing


def command(stage: str, /, **values) -> str:
    """The shell command of a job; `values` fill its fields (wildcards, or DVC's ${item.*})."""
    return stage_of(stage).command.format(**values)


def command_fields(stage: str, /) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(stage_of(stage).command) if f]


def entry_point(stage: str, /) -> str:
    return stage_of(stage).command.split()[1]


def row_wildcards(stage: str, wildcards: dict) -> dict:
    """A job's wildcards without its matrix axes: its row ({} or {row wildcard: section})."""
    return {k: v for k, v in wildcards.items() if k not in stage_of(stage).axes}


# --------------------------------------------------------------------------- static import graph
def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _module_files(dotted: str) -> list[Path]:
    """The files importing `dotted` executes: each package's __init__.py on the way, then the module
    (diffrl itself is a namespace package: no file). Modules outside diffrl are not ours."""
    parts = dotted.split(".")
    if parts[0] != "diffrl":
        return []
    files = []
    for i in range(1, len(parts) + 1):
        base = ROOT.joinpath(*parts[:i])
        if base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
        elif (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
    return files


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`, which runs only when the file is the program itself."""
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and len(t.comparators) == 1 and getattr(t.comparators[0], "value", None) == "__main__")


@functools.lru_cache(maxsize=None)
def imports(path: Path, entry: bool = False) -> frozenset[Path]:
    """The diffrl files one file imports, wherever the statement is (module level or in a function:
    a function's import runs when it is called, and we do not guess which calls happen). An imported
    module's `if __name__ == "__main__":` block never runs, so only an entry point's counts."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[Path] = set()

    def visit(node):
        if not entry and _is_main_block(node):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_module_files(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, up level-1 packages
                parts = package.split(".")
                base = ".".join([*parts[:len(parts) - node.level + 1], *([base] if base else [])])
            found.update(_module_files(base))
            for alias in node.names:  # `from diffrl import config` imports the module diffrl.config
                if _is_module(f"{base}.{alias.name}"):
                    found.update(_module_files(f"{base}.{alias.name}"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(path)
    return frozenset(found)


def closure(starts, stop=frozenset()) -> set[Path]:
    """Every file reachable from `starts` by imports, not entering the files in `stop`."""
    seen, todo = set(starts), list(starts)
    while todo:
        path = todo.pop()
        for dep in imports(path, entry=path.parent == ROOT / "stages"):  # stage scripts are programs
            if dep not in seen and dep not in stop:
                seen.add(dep)
                todo.append(dep)
    return seen


def algorithm_file(section: str) -> Path:
    from diffrl.algos import REGISTRY
    return ROOT / "diffrl" / "algos" / f"{REGISTRY[section].module}.py"


def algorithm_files(section: str) -> list[Path]:
    """The algorithm modules a section's job runs: its own and those its entry names in `runs`."""
    from diffrl.algos import REGISTRY
    return [algorithm_file(section)] + [ROOT / "diffrl" / "algos" / f"{m}.py" for m in REGISTRY[section].runs]


def row_sections(stage: str, /, offline_init: str = "", **wildcards) -> list[str]:
    """The params sections whose algorithm modules a dispatching job runs (its stage's `runs`): the
    section it trains or loads, the pretrained parts that one starts from, the offline run an
    offline-to-online row starts from (`offline_init`), the runs a tilted row's evaluation loads."""
    st = stage_of(stage)
    return st.runs(wildcards[st.row], offline_init)


def job_init(params: dict, stage: str, row: dict) -> str:
    """The offline run a job's row starts from (its section's offline_init; '' for none or no row)."""
    st = stage_of(stage)
    return offline_init_of(params, row[st.row]) if st.row else ""


def code_deps(stage: str, offline_init: str = "", **wildcards) -> list[str]:
    """The code a job runs: its stage script, then the diffrl files it imports (sorted).

    For a dispatching stage: the script's closure without the algorithm modules (those of
    diffrl.algos.REGISTRY), plus the closure of the modules of row_sections(...).
    """
    entry = ROOT / entry_point(stage)
    if STAGES[stage].row:
        from diffrl.algos import REGISTRY
        algorithms = frozenset(algorithm_file(s) for s in REGISTRY)
        files = closure([entry], stop=algorithms)
        files |= closure([f for s in row_sections(stage, offline_init, **wildcards) for f in algorithm_files(s)])
    else:
        files = closure([entry])
    return [entry_point(stage)] + sorted(rel(f) for f in files - {entry} if rel(f) not in NEVER_DEPS)


# --------------------------------------------------------------------------- data dependencies and jobs
def data_deps(stage: str, /, params: dict, folders: bool = False, offline_init: str | None = None,
              **wildcards) -> list[str]:
    """The outputs of other jobs a job reads (its stage's `inputs`). `folders`: for DVC, which cannot
    expand a list of params.yaml inside a stage's deps, the summaries depend on the folders holding
    those files. `offline_init` (default: its params value) is the offline run an online row starts from."""
    st = stage_of(stage)
    section = wildcards[st.row] if st.row else ""
    return st.inputs(Job(wildcards, section, params, folders, offline_init))


def outputs(stage: str, /, **wildcards) -> list[str]:
    return [template.format(**wildcards) for template in stage_of(stage).outputs]


def trained_runs(params: dict) -> set[str]:
    """The sections the selected rows train or start from: the rows `algorithms` selects (a tilted
    row: the runs it evaluates), their pretraining, and the offline runs online rows start from."""
    from diffrl.algos import ONLINE, PRETRAINED, evaluated_runs
    trained = set()
    for row in params["algorithms"]:
        for run in evaluated_runs(row):
            trained |= {run, *PRETRAINED.get(run, ())}
        init = offline_init_of(params, row) if row in ONLINE else ""
        if init:
            trained |= {init, *PRETRAINED.get(init, ())}
    return trained


def stage_rows(params: dict) -> list[tuple[str, dict]]:
    """(stage, row wildcards) of every job family the default target builds, in pipeline order
    (STAGES): for a stage with a row wildcard, the rows its `builds` names. The matrix axes (Stage.axes)
    multiply each family into jobs."""
    import diffrl.algos
    trained = trained_runs(params)
    out = []
    for name, st in STAGES.items():
        if not st.row:
            out.append((name, {}))
            continue
        values = getattr(diffrl.algos, st.sections)
        rows = {"trained": [s for s in values if s in trained], "selected": list(params["algorithms"]),
                "all": list(values)}[st.builds]
        out += [(name, {st.row: r}) for r in rows]
    return out


def jobs(params: dict) -> list[tuple[str, dict]]:
    """Every job of the default target: (stage, wildcards), the matrix axes expanded."""
    out = []
    for stage, row in stage_rows(params):
        combos = [dict(row)]
        for axis, source in STAGES[stage].axes.items():
            combos = [{**c, axis: v} for c in combos for v in axis_values(params, source)]
        out += [(stage, c) for c in combos]
    return out


def default_target(params: dict) -> list[str]:
    """The outputs the default target builds (the Snakefile's `all`): every job's outputs of the stages
    with a `target` place, in that order."""
    targets = sorted((st.target, name) for name, st in STAGES.items() if st.target)
    every = jobs(params)
    return [o for _, name in targets for stage, w in every if stage == name for o in outputs(stage, **w)]


# --------------------------------------------------------------------------- dvc.yaml
HEADER = """\
# GENERATED by `python -m diffrl.params --regenerate`: do not edit, change the stage records in
# diffrl/pipeline.py (commands, inputs, the keys each stage reads), the registry or params.yaml and
# regenerate; tests/test_config.py fails while this file is stale.
# The same jobs as the Snakefile, for `dvc repro` and `dvc exp run -S key=value`: one stage per
# row (STAGE_ROW), a matrix over tasks and seeds (or toy sets), which DVC reads from params.yaml
# itself, as it does budget. The rows built (those `algorithms` selects and the runs they start
# from), the environments with a data agent and the summaries (derived from `tasks`) and each job's
# code dependencies (its stage script and the diffrl files it imports, its own algorithm's only)
# are written out here: regenerate after changing `algorithms`, `tasks` or an online row's
# offline_init. A stage depends on the values it reads of the selected budget preset only
# (budgets.${budget}.KEY), so editing another preset reruns nothing.
"""


def dvc_params(stage: str, **row) -> list[str]:
    """A stage's dvc.yaml params: its declared keys, what its task changes (the task's entry of
    `tasks`: DVC cannot list a key a task may not set), and its budget keys in the preset DVC selects."""
    task = ["tasks.${item.task}"] if "task" in STAGES[stage].axes else []
    # a summary reads the task names, which DVC cannot track apart from what each task changes: its deps
    # list every task's evaluations, written out here (regenerated when the tasks change)
    keys = [k for k in stage_keys(stage, **row) if k != "tasks"]
    return keys + task + [f"budgets.${{budget}}.{k}" for k in budget_keys(stage, **row)]


def stage_name(stage: str, row: dict) -> str:
    """A row's dvc.yaml stage: STAGE_ROW (offline_train_dtql), or STAGE for stages without a row.
    Each job is one matrix entry: offline_train_dtql@halfcheetah-0, bandit_train_bc@8gaussians."""
    return stage + "".join(f"_{v}" for v in row.values())


def dvc_stage(stage: str, params: dict, row: dict) -> tuple[str, list[str]]:
    """(name, yaml lines) of one dvc.yaml stage: one matrix over the stage's axes per row."""
    from diffrl.algos import section_of
    axes = STAGES[stage].axes
    item = {axis: f"${{item.{axis}}}" for axis in axes}
    values = {**row, **item}
    name = stage_name(stage, row)
    init = job_init(params, stage, row)
    lines = [f"  {name}:"]
    if item:
        lines.append("    matrix:")
        # a list of params.yaml, which DVC reads itself (`tasks`: its keys), or one derived from the
        # tasks (the data agents' environments, the summaries), written out
        lines += [f"      {axis}: ${{{source}}}" if source == "tasks" or source not in AXIS_SOURCES else
                  f"      {axis}: [{', '.join(axis_values(params, source))}]" for axis, source in axes.items()]
    lines.append(f"    cmd: {command(stage, **values)}")
    deps = code_deps(stage, offline_init=init, **row)
    # an online row's starting run follows its params value (`dvc exp run -S dpmd_o2o.offline_init=qg`;
    # its code dependencies are those of the value written here)
    templated_init = f"${{{section_of(row[STAGES[stage].row])}.offline_init}}" if init else None
    deps += data_deps(stage, params, folders=True, offline_init=templated_init, **values)
    lines.append("    deps:")
    lines += [f"      - {d}" for d in deps]
    keys = dvc_params(stage, **row)
    if keys:
        lines.append("    params:")
        lines += [f"      - {k}" for k in keys]
    outs = outputs(stage, **values)
    if not STAGES[stage].cached:
        # small result files kept in git (not in the DVC cache); the metrics feed `dvc exp show`, the
        # per-row curves and the intervals the top-level `plots:` (dvc_plots)
        metrics = [o for o in outs if o.endswith("_metrics.json")]
        lines.append("    outs:")
        for o in outs:
            if o not in metrics:
                lines += [f"      - {o}:", "          cache: false"]
        if metrics:
            lines.append("    metrics:")
            lines += [f"      - {o}:\n          cache: false" for o in metrics]
    else:
        lines.append("    outs:")
        lines += [f"      - {o}" for o in outs]
    return name, lines


# The cost plan (diffrl.plan), first in dvc.yaml so that `dvc repro` and `dvc exp run` run it before any
# other stage: it prints the plan and fails when the estimate exceeds max_hours. It reruns whenever
# params.yaml or the code changes, that is whenever another stage may, and writes nothing.
PLAN_STAGE = """\
  plan:
    cmd: python -m diffrl.plan --dvc
    deps:
      - params.yaml
      - diffrl
      - stages"""


def dvc_plots(params: dict) -> list[str]:
    """dvc.yaml's top-level `plots:`, for the suite of tasks: one line per selected row (its mean score
    over tasks and seeds) against gradient steps for the offline rows and environment steps for the
    online rows, the IQM intervals and the performance profile; `dvc plots show` draws them."""
    from diffrl.algos import OFFLINE, ONLINE
    lines = ["plots:"]
    for kind, rows, unit in (("offline", OFFLINE, "gradient steps"), ("online", ONLINE, "environment steps")):
        selected = [r for r in params["algorithms"] if r in rows]
        if not selected:
            continue
        lines += [f"  - suite {kind} rows:", "      template: linear", "      x: step", "      y:"]
        lines += [f"        {row_curve_file('suite', r)}: score" for r in selected]
        lines += [f"      title: 'suite, {kind} rows: normalised score, mean over tasks and seeds'",
                  f"      x_label: {unit}", "      y_label: normalised score"]
    lines += ["  - results/suite_intervals.png", "  - results/suite_profile.png"]
    return lines


def dvc_yaml(params: dict) -> str:
    """The text of dvc.yaml for validated params (diffrl.config.load)."""
    blocks = [[PLAN_STAGE]] + [dvc_stage(stage, params, row)[1] for stage, row in stage_rows(params)]
    return (HEADER + "stages:\n" + "\n\n".join("\n".join(b) for b in blocks) + "\n\n"
            + "\n".join(dvc_plots(params)) + "\n")


def main(argv: list[str]) -> int:
    if argv[:1] == ["deps"] and len(argv) >= 2 and argv[1] in STAGES:
        wildcards = dict(a.split("=", 1) for a in argv[2:])
        print("\n".join(code_deps(argv[1], **wildcards)))
        return 0
    print("usage: python -m diffrl.dag deps STAGE [algo=ROW | critic=SECTION | behavior=SECTION] "
          "[offline_init=ROW]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
