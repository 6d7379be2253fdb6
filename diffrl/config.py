"""params.yaml: load, override, validate, and hand each stage only the keys it declared.

Every section of params.yaml is a dataclass whose fields carry a one-line doc and their valid
range. Validation runs before any work starts (in the Snakefile at parse time and in every
stage entry point), so a typo or an out-of-range value costs one line of error, not a run.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from diffrl.algos import SECTIONS as ALGORITHM_SECTIONS
from diffrl.fields import REQUIRED, ConfigError, param
from diffrl.tasks import ENV_NAMES  # noqa: F401 (re-exported)


BUDGET_NAMES = ("smoke", "quick", "paper")


@dataclass
class Budget:
    """How much compute a run gets. Algorithm hyperparameters never change with the budget. The presets'
    values live in params.yaml only (budgets.smoke, .quick, .paper): every key of each is set there."""
    sac_steps: int = param(REQUIRED, "env steps of the SAC agent that collects the generated dataset", low=1)
    sac_warmup: int = param(REQUIRED, "uniform-random env steps before SAC starts learning", low=0)
    sac_eval_every: int = param(REQUIRED, "SAC env steps between checks of the dataset quality target", low=1)
    dataset_episodes: int = param(REQUIRED, "episodes rolled out into a generated dataset", low=1)
    dtql_pretrain_steps: int = param(REQUIRED, "gradient steps of DTQL's pretraining, its critic and its EDM behaviour "
                                     "each (the reference's joint 50k)", low=1)
    eda_critic_steps: int = param(REQUIRED, "gradient steps of EDA's IQL critic (the reference's 1.5M)", low=1)
    energy_behavior_steps: int = param(REQUIRED, "gradient steps of EDA's bottleneck energy behaviour (batch 2048, "
                                       "about 1 s a step on a CPU core)", low=1)
    offline_steps: int = param(REQUIRED, "gradient steps of diffusion BC and the Diffusion-QL variants (their "
                               "reference's 2M)", low=1)
    iql_steps: int = param(REQUIRED, "gradient steps of the iql row (the official IQL's 1M)", low=1)
    dtql_steps: int = param(REQUIRED, "gradient steps of DTQL's one-step policy, its critic and behaviour still "
                            "training (the reference's 1M after pretraining)", low=1)
    align_steps: int = param(REQUIRED, "gradient steps of EDA alignment (EDA's final policy)", low=1)
    align_support_states: int = param(REQUIRED, "dataset states whose 16 behaviour samples EDA draws before alignment "
                                      "(0 = every state, as released; the 15-step sampler dominates EDA's "
                                      "cost on a CPU)", low=0)
    eval_every: int = param(REQUIRED, "gradient steps between evaluations during training", low=1)
    curve_episodes: int = param(REQUIRED, "episodes per evaluation during training (learning curve)", low=1)
    eval_episodes: int = param(REQUIRED, "episodes of the final evaluation (fresh seeds, separate from training)", low=1)
    toy_samples: int = param(REQUIRED, "samples in each 2-D toy bandit dataset", low=16)
    toy_steps: int = param(REQUIRED, "gradient steps of each algorithm in the 2-D bandit study", low=1)
    online_steps: int = param(REQUIRED, "env steps of each online row (SAC, SDAC, DPMD variants)", low=1)
    online_warmup: int = param(REQUIRED, "cap on the random-action warm-up of online rows (their own warmup, e.g. "
                               "DPMD's 30000, applies when smaller)", low=0)
    online_eval_every: int = param(REQUIRED, "env steps between evaluations during online training", low=1)
    below_regime: list = param(REQUIRED, "offline rows whose measured learning curves show they are still below their "
                               "learning regime at this preset's steps (docs/budgets.md); the summary marks "
                               "them instead of printing a bare number")
    max_episode_steps: int = param(REQUIRED, "cap on evaluation episode length (0 = the environment's own, 1000 for "
                                   "MuJoCo); the smoke budget caps it so every online variant evaluates in "
                                   "seconds, and the table says so", low=0)


@dataclass
class DatasetConfig:
    """How the pipeline generates a task's dataset (a task named by a Minari id is fetched instead;
    docs/data.md). Per task: `tasks: {hopper-medium: {dataset: {seed: 1}}}`."""
    medium_target_score: float = param(33.0, "normalised evaluation score at which the SAC agent's medium policy is "
                                       "frozen (about a third of expert, as D4RL did); its run goes on to "
                                       "sac_steps for the expert policy", low=0, high=100)
    seed: int = param(0, "seed of the data-collection agent and of the dataset's rollouts", low=0)


@dataclass
class StatsConfig:
    """Multi-seed statistics of the summary stage."""
    baseline: str = param("bc", "row that probability of improvement is measured against")
    bootstrap_reps: int = param(2000, "stratified-bootstrap resamples for the IQM confidence interval", low=100)
    confidence: float = param(0.95, "confidence level of the IQM interval", low=0, high=1,
                              low_open=True, high_open=True)


@dataclass
class Params:
    """The whole of params.yaml: the run's top-level settings, whose values live in params.yaml only, and
    the sections, whose defaults live in their dataclasses (params.yaml states what a row changes)."""
    budget: str = param(REQUIRED, "compute preset: smoke (the graph end to end), quick (real learning on a CPU), "
                        "paper (published step counts)", choices=BUDGET_NAMES)
    device: str = param(REQUIRED, "auto picks CUDA when present, else CPU", choices=("auto", "cpu", "cuda"))
    deterministic: bool = param(REQUIRED, "request deterministic kernels (bit-identical CPU reruns)")
    compile: str = param(REQUIRED, "torch.compile the networks (MLPs, critic ensembles, EDA energy nets): none "
                         "(eager), default, reduce-overhead (CUDA graphs on a GPU) or max-autotune; seconds of "
                         "compiling per job, then faster steps (studies/speed/README.md)",
                         choices=("none", "default", "reduce-overhead", "max-autotune"))
    tf32: bool = param(REQUIRED, "allow TF32 matrix multiplies on CUDA (faster on Ampere and later, about 3 "
                       "significant digits in the products; no effect on CPU)")
    seeds: list = param(REQUIRED, "training seeds; every algorithm runs each one")
    tasks: dict = param(REQUIRED, "the tasks `snakemake` (target all) and `dvc repro` build, each an environment and "
                        "a dataset named as D4RL names it (halfcheetah-medium, hopper-medium-replay) or a Minari id, "
                        "mapped to what it changes for that task: {SECTION: {key: value}} over the row's settings "
                        "and its algorithm's published ones for the task ({}: nothing; docs/tasks.md)")
    algorithms: list = param(REQUIRED, "rows of the summary table (offline algorithms and online variants)")
    tfg_lambda: float = param(REQUIRED, "training-free guidance strength of the guided online variants "
                              "(dpmd_tilt, dpmd_model): `dvc exp run -S tfg_lambda=64` reruns exactly those", low=0)
    max_hours: float = param(REQUIRED, "stop a run whose estimated wall time (the cost plan printed before the first "
                             "job, diffrl.plan) exceeds this many hours; caps the default target, and an explicit "
                             "target when given on the command line", low=0, low_open=True)
    toy_sets: list = param(REQUIRED, "2-D toy bandit datasets the toy stage builds")
    bandit_sets: list = param(REQUIRED, "toy datasets of the bandit study (every algorithm on each)")
    budgets: dict = param(REQUIRED, "the smoke, quick and paper presets")
    dataset: DatasetConfig = param(DatasetConfig(), "offline data")
    stats: StatsConfig = param(StatsConfig(), "multi-seed statistics")


# Sections defined here. Algorithm sections (iql, bc, ...) are owned by their modules and found
# through diffrl.algos.SECTIONS, which imports a module only when its section is validated.
SECTION_TYPES: dict[str, type] = {"dataset": DatasetConfig, "stats": StatsConfig}


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _suggest(key: str, valid, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(valid))})"


def _default(f: dataclasses.Field):
    """A field's dataclass default (None for a REQUIRED field, whose value params.yaml holds)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


KINDS = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict}


def kind_of(f: dataclasses.Field) -> type:
    """A field's value type: its default's, or for a REQUIRED field its annotation's."""
    default = _default(f)
    return type(default) if default is not None else KINDS[str(f.type)]


def _example(f: dataclasses.Field) -> str:
    default = _default(f)
    return f", e.g. {default!r}" if default is not None else ""


def _coerce(where: str, value: Any, f: dataclasses.Field) -> Any:
    kind = kind_of(f)
    meta = f.metadata
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} is not a boolean: set true or false")
    elif kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    value = float(value)  # yaml leaves '1e-4' and 'inf' as strings
                except ValueError:
                    raise ConfigError(f"{where}={value!r} is not a number: set a {kind.__name__}"
                                      f"{_example(f)}") from None
            else:
                raise ConfigError(f"{where}={value!r} is not a number: set a {kind.__name__}{_example(f)}")
        if kind is int:
            if not float(value).is_integer():
                raise ConfigError(f"{where}={value!r} must be a whole number{_example(f)}")
            value = int(value)
        else:
            value = float(value)
            if math.isnan(value):
                raise ConfigError(f"{where} is NaN: set a number{_example(f)}")
        low, high = meta.get("low"), meta.get("high")
        if low is not None and (value < low or (meta["low_open"] and value == low)):
            rel = ">" if meta["low_open"] else ">="
            raise ConfigError(f"{where}={value!r} is out of range: it must be {rel} {low}")
        if high is not None and (value > high or (meta["high_open"] and value == high)):
            rel = "<" if meta["high_open"] else "<="
            raise ConfigError(f"{where}={value!r} is out of range: it must be {rel} {high}")
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} must be a string")
        choices = meta.get("choices")
        if choices and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}={value!r} is not one of {', '.join(choices)}{hint}")
    elif kind is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}={value!r} must be a list{_example(f)}")
    elif kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} must be a mapping")
    return value


def build_section(prefix: str, cls, raw: Any):
    """Validate one mapping against a config dataclass; unknown keys get the closest valid key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix} must be a mapping of keys to values, got {raw!r}")
    fields = _fields(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"unknown key '{prefix}.{key}' in params.yaml{_suggest(key, fields, prefix + '.')}")
        f = fields[key]
        sub = _default(f)
        if dataclasses.is_dataclass(sub):
            kwargs[key] = build_section(f"{prefix}.{key}", type(sub), value)
        else:
            kwargs[key] = _coerce(f"{prefix}.{key}", value, f)
    for key, f in fields.items():
        if key not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"'{prefix}.{key}' is not set: params.yaml holds every key of {prefix} "
                              f"(docs/params.md lists them); add it")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(prefix)
    return obj


def apply_overrides(raw: dict, overrides) -> dict:
    """Apply `key.sub=value` overrides (the syntax of `dvc exp run -S`); values parse as YAML."""
    raw = copy.deepcopy(raw)
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. iql.expectile=0.8")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text != "" else ""
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return raw


def read_params(path: str | Path = "params.yaml", overrides=()) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the repository root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix the syntax") from None
    return apply_overrides(raw, overrides)


def _task_changes(tasks: dict, sections) -> dict:
    """`tasks` checked: each name a task (diffrl.tasks), each value a mapping of sections to changes."""
    from diffrl.tasks import parse
    if not tasks:
        raise ConfigError("tasks is empty: list at least one task, e.g. tasks: {halfcheetah-medium: {}}")
    out = {}
    for name, changes in tasks.items():
        try:
            parse(name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        changes = changes or {}
        if not isinstance(changes, dict):
            raise ConfigError(f"tasks.{name}={changes!r} must be a mapping of sections to changes, e.g. "
                              f"{{dql: {{eta: 0.5}}}} ({{}} for none)")
        for key, value in changes.items():
            if key not in sections:
                raise ConfigError(f"unknown section 'tasks.{name}.{key}'{_suggest(key, sections, f'tasks.{name}.')}")
            if not isinstance(value, dict):
                raise ConfigError(f"tasks.{name}.{key}={value!r} must be a mapping of keys to values")
            if key == "sac" or (key == "dataset" and set(value) - {"seed"}):
                # the SAC agent and its medium point serve every task of an environment
                raise ConfigError(f"tasks.{name}.{key}: the data agent is shared by an environment's tasks; set "
                                  f"{'sac' if key == 'sac' else 'dataset.medium_target_score'} for all of them at the "
                                  f"top level (a task may change only dataset.seed, its rollouts' seed)")
        out[name] = changes
    return out


def task_section(raw: dict, section: str, task: str) -> dict:
    """A section's raw values for one task: its algorithm's published settings for the task (its
    module's PUBLISHED_TASKS), then params.yaml's section (what makes the row), then what the task's
    entry of `tasks` changes. The dataclass defaults fill the rest."""
    from diffrl.algos import published_settings
    from diffrl.tasks import parse
    name = parse(task).name
    published = published_settings(section, name) if section in ALGORITHM_SECTIONS else {}
    changes = ((raw.get("tasks") or {}).get(name) or {}).get(section) or {}
    return {**published, **(raw.get(section) or {}), **changes}


def validate(raw: dict, sections=None, task: str | None = None) -> dict:
    """Validate the params mapping; return a dict of top-level key -> validated value.

    Sections become dataclass instances; `budgets` becomes {name: Budget}; plain keys are coerced.
    `sections`: the algorithm sections to validate (default: all). A stage passes the ones it reads,
    so it imports only their modules (the code dependencies diffrl.dag declares for it); the others
    are left out of the result. Plain keys, budgets, dataset and stats are always validated, and the
    Snakefile validates everything before any job starts. `task`: the sections (and dataset) as one
    job of that task reads them (task_section).
    """
    top = _fields(Params)
    algo_sections = [s for s in ALGORITHM_SECTIONS if sections is None or s in sections]
    known = set(top) | set(SECTION_TYPES) | set(ALGORITHM_SECTIONS)
    out: dict[str, Any] = {}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key '{key}' in params.yaml{_suggest(key, known)}")
    for key in algo_sections:
        out[key] = build_section(key, ALGORITHM_SECTIONS[key], raw.get(key))
    for key in set(top) | set(SECTION_TYPES):
        value = raw.get(key)
        if key in SECTION_TYPES:
            out[key] = build_section(key, SECTION_TYPES[key], value)
        elif key == "budgets":
            value = value or {}
            for name in value:
                if name not in BUDGET_NAMES:
                    raise ConfigError(f"unknown budget 'budgets.{name}'{_suggest(name, BUDGET_NAMES)}")
            out[key] = {name: build_section(f"budgets.{name}", Budget, value.get(name)) for name in BUDGET_NAMES}
        else:
            if key not in raw:
                raise ConfigError(f"'{key}' is not set: params.yaml holds every top-level key (docs/params.md "
                                  f"lists them); add it")
            out[key] = _coerce(key, value, top[key])
    out["tasks"] = _task_changes(out["tasks"], [*ALGORITHM_SECTIONS, "dataset"])
    if task is not None:  # one job's task: its sections with what the task changes
        for key in ["dataset", *algo_sections]:
            cls = SECTION_TYPES.get(key) or ALGORITHM_SECTIONS[key]
            out[key] = build_section(f"{key} (task {task})", cls, task_section(raw, key, task))
    elif sections is None:  # everything: what each task changes is checked too
        for name, changes in out["tasks"].items():
            for key in changes:
                cls = SECTION_TYPES.get(key) or ALGORITHM_SECTIONS[key]
                build_section(f"tasks.{name}.{key}", cls, task_section(raw, key, name))
    from diffrl.data import TOY_SETS
    for name in out["toy_sets"] + out["bandit_sets"]:
        if name not in TOY_SETS:
            raise ConfigError(f"toy_sets: unknown toy dataset '{name}'{_suggest(name, TOY_SETS)}")
    for seed in out["seeds"]:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seeds: {seed!r} is not a non-negative integer")
    if len(set(out["seeds"])) != len(out["seeds"]) or not out["seeds"]:
        raise ConfigError("seeds must be a non-empty list of distinct integers, e.g. [0, 1, 2]")
    from diffrl.algos import OFFLINE, ROWS
    for name, budget in out["budgets"].items():
        for row in budget.below_regime:
            if row not in OFFLINE:
                raise ConfigError(f"budgets.{name}.below_regime: '{row}' is not an offline row"
                                  f"{_suggest(str(row), OFFLINE)}")
    for algo in out["algorithms"]:
        if algo not in ROWS:
            raise ConfigError(f"algorithms: unknown algorithm '{algo}'{_suggest(algo, ROWS)}")
    missing = [n for n in out["bandit_sets"] if n not in out["toy_sets"]]
    if missing:
        raise ConfigError(f"bandit_sets: {missing[0]} is not in toy_sets: add it there first")
    from diffrl.algos import DQL_VARIANTS
    for row, variant in DQL_VARIANTS.items():
        if row in out and out[row].variant != variant:
            raise ConfigError(f"{row}.variant={out[row].variant!r}: the {row} row is Diffusion-QL's "
                              f"'{variant}' variant; set {row}.variant: {variant}")
    from diffrl.algos import GUIDED
    for row in GUIDED:
        if "tfg_lambda" in (raw.get(row) or {}):
            raise ConfigError(f"{row}.tfg_lambda: the guided variants ({', '.join(GUIDED)}) take their guidance "
                              f"strength from the top-level key: set tfg_lambda: {raw[row]['tfg_lambda']} instead")
    from diffrl.algos import TILT_BASES
    for row in out["algorithms"]:
        if row in TILT_BASES and TILT_BASES[row] not in out["algorithms"]:
            raise ConfigError(f"algorithms: {row} is scored against its base row {TILT_BASES[row]} (probability of "
                              f"improvement), which is not in algorithms {out['algorithms']}: add it")
    if out["stats"].baseline not in out["algorithms"]:
        raise ConfigError(f"stats.baseline='{out['stats'].baseline}' is not in algorithms "
                          f"{out['algorithms']}: pick one of them")
    return out


def _code_digest() -> str:
    """A hash of the diffrl package's source: what validation (and its error messages) depends on."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def validated_cache_dir() -> Path:
    """Where validate_graph remembers validated algorithm sections: the user's cache (XDG), shared by
    every checkout, since an entry is named by the hash of the values and the code it holds."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffrl" / "validated"


def validate_graph(raw: dict) -> dict:
    """validate(raw) for the Snakefile, which needs every value checked before a job runs but reads
    the algorithm sections only as records (an online row's offline_init).

    The top-level keys, budgets, dataset and stats are validated here every time (no torch). The
    algorithm sections import their modules, so torch (about a second of every `snakemake` call);
    their validated values depend only on the raw values and the package's code, so they are
    remembered in validated_cache_dir() under a hash of both, and a call with values and code seen
    before imports no torch. Algorithm sections come back as read-only records (SimpleNamespace)
    whether remembered or not, so the graph never depends on which happened."""
    out = validate(raw, sections=())
    key = hashlib.sha256((json.dumps(raw, sort_keys=True, default=str) + _code_digest()).encode()).hexdigest()
    memo = validated_cache_dir() / f"{key}.json"
    try:
        sections = json.loads(memo.read_text())
    except (OSError, ValueError):
        full = validate(raw)
        sections = {s: dataclasses.asdict(full[s]) for s in ALGORITHM_SECTIONS}
        try:  # a cache that cannot be written costs the next call a second, nothing else
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(sections, sort_keys=True))
            tmp.replace(memo)
        except OSError:
            pass
    out.update({s: SimpleNamespace(**values) for s, values in sections.items()})
    return out


def load(path: str | Path = "params.yaml", overrides=(), sections=None, task: str | None = None) -> dict:
    return validate(read_params(path, overrides), sections, task)


class BudgetView:
    """The selected budget preset, restricted to the keys a stage declared (diffrl.pipeline.budget_keys).

    Changing any other key of the preset reruns nothing, so reading one raises instead of
    silently depending on a value Snakemake and DVC do not track.
    """

    def __init__(self, stage: str, preset: Budget, keys):
        self._stage, self._preset, self._keys = stage, preset, frozenset(keys)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._keys:
            raise KeyError(f"stage '{self._stage}' reads budget key '{name}' but does not declare it "
                           f"in diffrl.pipeline.budget_keys")
        return getattr(self._preset, name)


class StageParams:
    """The validated params of one stage, restricted to the keys it declared.

    Reading an undeclared key (or an undeclared key of the selected budget preset, see BudgetView)
    raises, so a stage cannot silently depend on a value that Snakemake's params: and dvc.yaml's
    params: do not track.
    """

    def __init__(self, stage: str, validated: dict, declared, budget_keys=()):
        self._stage = stage
        self.declared = tuple(declared)
        self._values = {}
        for key in declared:
            top, _, sub = key.partition(".")
            self._values[key] = validated[top] if not sub else getattr(validated[top], sub)
        self._budget = None
        if budget_keys:
            self._budget = BudgetView(stage, validated["budgets"][validated["budget"]], budget_keys)

    def __getitem__(self, key):
        if key not in self._values:
            raise KeyError(f"stage '{self._stage}' reads '{key}' but does not declare it "
                           f"in diffrl.pipeline.STAGES")
        return self._values[key]

    @property
    def budget(self) -> BudgetView:
        if self._budget is None:
            raise KeyError(f"stage '{self._stage}' reads no budget key: declare the ones it reads "
                           f"in diffrl.pipeline.budget_keys")
        return self._budget


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _parse_in_place(d: dict) -> None:
    """Turn Snakemake's string leaves ('0.8', '[0, 1]' items) into YAML values, in place."""
    for k, v in d.items():
        if isinstance(v, dict):
            _parse_in_place(v)
        elif isinstance(v, list):
            d[k] = [yaml.safe_load(x) if isinstance(x, str) and x.strip() else x for x in v]
        elif isinstance(v, str) and v.strip():
            d[k] = yaml.safe_load(v)


def snakemake_config(config: dict, params_file: str | Path = "params.yaml") -> tuple[dict, list[str]]:
    """Merge Snakemake's `--config` into params.yaml and return (merged, overrides).

    Dotted keys (`iql.expectile: 0.8` in a `--configfile`; Snakemake 9's `--config` takes only plain
    names, docs/troubleshooting.md) work as in `dvc exp run -S`. The overrides are
    returned as `key=value` strings, which the rules pass on to their stage as `--set`, so a
    stage sees exactly the values Snakemake used.
    """
    dotted = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix(chr(10) + '...')}"
              for k, v in config.items() if "." in k]
    plain = {k: v for k, v in config.items() if "." not in k}
    merged = apply_overrides(plain, dotted)
    _parse_in_place(merged)
    base = _flatten(read_params(params_file))
    flat = _flatten(merged)
    for key in base:
        if key not in flat and not any(k.startswith(key + ".") for k in flat):
            raise ConfigError(f"--config removed '{key}': set a value instead")
    overrides = []
    def parse(v):  # Snakemake leaves nested and list --config values as strings
        if isinstance(v, list):
            return [parse(x) for x in v]
        return yaml.safe_load(v) if isinstance(v, str) and v.strip() else v

    for key, value in flat.items():
        value = parse(value)
        if key not in base or base[key] != value:
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            overrides.append(f"{key}={text.removesuffix(chr(10) + '...').strip()}")
    return merged, overrides
