"""params.yaml validation: bad input gets one line naming the key and the fix."""
import subprocess
import sys

import pytest
import yaml

from diffrl import config
from diffrl.config import ConfigError

from conftest import ROOT


def test_repository_params_are_valid():
    p = config.load(ROOT / "params.yaml")
    assert p["budget"] in ("smoke", "quick", "paper") and p["seeds"] == [0, 1, 2]
    assert set(p["budgets"]) == {"smoke", "quick", "paper"}


def _section_types() -> dict:
    from diffrl.algos import SECTIONS
    return {**config.SECTION_TYPES, **{s: SECTIONS[s] for s in SECTIONS}}


def _overlay_values(node: dict, base: dict, prefix: str = ""):
    """(key, overlay value, effective value beneath it) for every leaf of a Snakemake configfile
    overlay, merged over params.yaml as Snakemake merges it (key by key)."""
    for key, value in node.items():
        below = base.get(key) if isinstance(base, dict) else None
        if isinstance(value, dict) and isinstance(below, dict) and value:
            yield from _overlay_values(value, below, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value, below


def test_no_value_is_stated_twice():
    """One home per value (params.yaml's header): the top-level keys and the budget presets have no
    dataclass default (params.yaml holds them); a section's key in params.yaml differs from its
    dataclass default; every section is in params.yaml (DVC fails on a params key it lacks: `{}` for
    the defaults); and a configfile overlay (.test/config.yaml, a study's) states only what differs
    from params.yaml with its defaults."""
    import dataclasses
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    top = [f for f in dataclasses.fields(config.Params) if f.name not in config.SECTION_TYPES]
    assert [f.name for f in top if config._default(f) is not None] == []
    assert [f.name for f in dataclasses.fields(config.Budget) if config._default(f) is not None] == []
    types = _section_types()
    assert sorted(set(types) - set(raw)) == [], "add these sections to params.yaml (`{}`: the defaults)"
    restated = []
    for section, cls in types.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in (raw.get(section) or {}).items():
            if config._coerce(f"{section}.{key}", value, fields[key]) == config._default(fields[key]):
                restated.append(f"{section}.{key}")
    assert restated == [], f"params.yaml restates these dataclass defaults: delete them ({restated})"
    defaults = {s: dataclasses.asdict(cls()) for s, cls in types.items()}
    effective = {**raw, **{s: {**defaults[s], **(raw.get(s) or {})} for s in types}}
    overlays = [ROOT / ".test/config.yaml", *sorted(ROOT.glob("studies/*/*.yaml"))]
    assert overlays[1:], "the study overlays moved: point this test at them"
    for overlay in overlays:
        node = yaml.safe_load(overlay.read_text())
        same = [k for k, v, below in _overlay_values(node, effective) if v == below]
        assert same == [], f"{overlay.relative_to(ROOT)} restates params.yaml's values: delete {same}"


def test_a_budget_preset_sets_every_key():
    """dvc.yaml declares `budgets.${budget}.KEY` params, and DVC fails on a key missing from
    params.yaml: a preset without one stops with one line naming it."""
    raw = config.read_params(ROOT / "params.yaml")
    del raw["budgets"]["paper"]["toy_steps"]
    with pytest.raises(ConfigError, match=r"'budgets.paper.toy_steps' is not set: params.yaml holds every key"):
        config.validate(raw)
    raw = config.read_params(ROOT / "params.yaml")
    del raw["max_hours"]
    with pytest.raises(ConfigError, match=r"'max_hours' is not set: params.yaml holds every top-level key"):
        config.validate(raw)


@pytest.mark.parametrize("overrides, message", [
    (["iql.expectle=0.8"], "did you mean 'iql.expectile'"),
    (["budgt=smoke"], "did you mean 'budget'"),
    (["iql.expectile=1.5"], "iql.expectile=1.5 is out of range"),
    (["iql.expectile=0"], "out of range"),
    (["iql.lr=abc"], "is not a number"),
    (["sac.init_temperature=-1"], "out of range"),
    (["budget=smok"], "did you mean 'smoke'"),
    (["tasks={halfcheeta-medium: {}}"], "'halfcheeta-medium' names no environment"),
    (["tasks={hopper-medium: {dql: {etaa: 1}}}"], "did you mean 'tasks.hopper-medium.dql.eta'"),
    (["tasks={hopper-medium: {sac: {lr: 1}}}"], "shared by an environment's tasks"),
    (["seeds=[0, 0]"], "distinct"),
    (["budgets.smoke.eda_critic_steps=0"], "out of range"),
    (["algorithms=[bc, iqll]"], "did you mean 'iql'"),
    (["budgets.quick.below_regime=[dqll]"], "budgets.quick.below_regime: 'dqll' is not an offline row"),
    (["stats.baseline=qg", "algorithms=[bc, iql]"], "not in algorithms"),
    (["qg.variant=ql"], "set qg.variant: qg"),
])
def test_bad_values_are_rejected_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config.load(ROOT / "params.yaml", overrides)


def test_overrides_parse_like_dvc_set():
    p = config.load(ROOT / "params.yaml", ["iql.expectile=0.8", "seeds=[3, 4]", "budget=smoke"])
    assert p["iql"].expectile == 0.8 and p["seeds"] == [3, 4] and p["budget"] == "smoke"


def test_snakemake_nested_config_becomes_overrides():
    raw = config.read_params(ROOT / "params.yaml")
    raw["budget"] = "smoke"
    raw["iql"] = {**raw["iql"], "expectile": "0.8"}  # as `--config 'iql={expectile: 0.8}'` gives it
    merged, overrides = config.snakemake_config(raw, ROOT / "params.yaml")
    assert merged["iql"]["expectile"] == 0.8 and set(overrides) == {"budget=smoke", "iql.expectile=0.8"}


def test_stage_sees_only_declared_keys():
    from diffrl.pipeline import budget_keys, stage_keys
    keys = stage_keys("offline_train", algo="bc")
    sp = config.StageParams("offline_train", config.load(ROOT / "params.yaml", sections=keys), keys,
                            budget_keys("offline_train", algo="bc"))
    assert sp["bc"].T == 5 and sp.budget.offline_steps > 0  # the bc row's final policy: offline_steps
    with pytest.raises(KeyError, match="does not declare"):
        sp["iql"]
    with pytest.raises(KeyError, match="reads budget key 'dtql_pretrain_steps' but does not declare it"):
        sp.budget.dtql_pretrain_steps  # DTQL's pretraining key: changing it must not rerun bc


def test_a_stage_validates_only_the_algorithm_sections_it_reads():
    p = config.load(ROOT / "params.yaml", ["dpmd.num_particles=0"], sections=["iql"])
    assert p["iql"].expectile == 0.7 and "dpmd" not in p
    with pytest.raises(ConfigError, match="dpmd.num_particles=0 is out of range"):
        config.load(ROOT / "params.yaml", ["dpmd.num_particles=0"])
    with pytest.raises(ConfigError, match="tfg_lambda='abc' is not a number"):  # plain keys: always
        config.load(ROOT / "params.yaml", ["tfg_lambda=abc"], sections=["iql"])


def test_stage_entry_point_fails_fast_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "stages/train.py", "offline_train", "--algo", "iql", "--task", "halfcheetah-medium", "--seed", "0",
                          "--set", "iql.expectile=1.5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip() and "settotalmass" not in l]
    assert lines == ["error: iql.expectile=1.5 is out of range: it must be < 1"], out.stderr


def test_every_offline_row_trains_its_final_policy_for_its_own_steps_key():
    """Each row's steps key holds its reference's schedule at paper: bc and the Diffusion-QL variants
    offline_steps, iql iql_steps, DTQL dtql_steps after dtql_pretrain_steps of its critic and behaviour
    each, EDA's alignment align_steps; the other presets give every final policy the same steps."""
    from diffrl.algos import OFFLINE
    from diffrl.pipeline import budget_steps
    import dataclasses
    b = dataclasses.replace(config.load(ROOT / "params.yaml")["budgets"]["smoke"], offline_steps=7, iql_steps=5,
                            dtql_steps=3, dtql_pretrain_steps=11, eda_critic_steps=13, energy_behavior_steps=17,
                            align_steps=19)
    assert {r: budget_steps(r, b) for r in OFFLINE} == {**{r: 7 for r in OFFLINE}, "iql": 5, "dtql": 3, "eda": 19}
    assert [budget_steps(s, b) for s in ("dtql_critic", "eda_critic", "dtql_behavior", "eda_behavior")] == [11, 13, 11, 17]


def test_every_generated_file_is_current():
    """dvc.yaml, the params schema and docs/params.md are what `python -m diffrl.params --regenerate`
    writes from the declarations: run it after changing a key, a row, a stage or `algorithms`."""
    from diffrl.params import generated
    stale = [path for path, text in generated().items() if (ROOT / path).read_text() != text]
    assert stale == [], f"stale: {stale}: run `python -m diffrl.params --regenerate`"


def test_a_row_prints_its_effective_settings():
    """`python -m diffrl.params ROW`: the dataclass defaults with the row's params.yaml values on top,
    those marked; a name that is no row says the closest one."""
    out = subprocess.run([sys.executable, "-m", "diffrl.params", "qg", "sac"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "qg:" and "  variant: qg    # set in params.yaml" in lines
    assert "  eta: 1.0" in lines and "  batch_size: 256" in lines  # DQLConfig's defaults
    assert "sac:" in lines  # the section `sac`: the dataset's agent
    bad = subprocess.run([sys.executable, "-m", "diffrl.params", "qgg"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: unknown row or section 'qgg' (did you mean 'qg'?)"


def test_a_row_on_a_task_carries_its_references_settings_for_that_task():
    """The seed README's `--algo qg` on hopper-medium-replay: the fork's per-dataset values (grad norm 4,
    top_k 2), marked with their source; a task's own change wins over them."""
    from diffrl.params import show
    raw = config.read_params(ROOT / "params.yaml")
    lines = show("qg", raw, task="hopper-medium-replay").splitlines()
    assert lines[0] == "qg:    # on task hopper-medium-replay"
    assert "  grad_norm: 4.0    # published for hopper-medium-replay" in lines
    assert "  selection_k: 2    # published for hopper-medium-replay" in lines
    assert "  variant: qg    # set in params.yaml" in lines
    raw["tasks"]["hopper-medium-replay"] = {"qg": {"grad_norm": 2.5}}
    assert "  grad_norm: 2.5    # tasks.hopper-medium-replay" in show("qg", raw, task="hopper-medium-replay").splitlines()
    assert "  grad_norm: 9.0" in show("qg", raw, task="halfcheetah-medium").splitlines()  # its default


# --------------------------------------------------------------------------- the JSON Schema
def _snakemake_config(*entries, configfile=None):
    """The merged config and overrides the Snakefile builds from `--config ENTRY...` (parsed and
    merged over params.yaml as Snakemake 9 does) and `--configfile`."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config
    raw = config.read_params(ROOT / "params.yaml")
    if configfile:
        update_config(raw, yaml.safe_load((ROOT / configfile).read_text()))
    update_config(raw, parse_config(list(entries)))
    return config.snakemake_config(raw, ROOT / "params.yaml")


def _schema_errors(merged):
    import json
    import jsonschema
    from diffrl.schema import PATH, numbers
    schema = json.loads((ROOT / PATH).read_text())
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(numbers(merged))]


def test_params_schema_checks_ranges():
    """The generated schema (test_every_generated_file_is_current) is a valid JSON Schema with each
    field's range."""
    import jsonschema
    from diffrl.schema import schema
    jsonschema.Draft202012Validator.check_schema(schema())
    iql = schema()["$defs"]["IQLConfig"]["properties"]["expectile"]
    assert iql["exclusiveMinimum"] == 0 and iql["exclusiveMaximum"] == 1 and iql["description"]


@pytest.mark.parametrize("entries, configfile", [
    ((), None),
    (("budget=smoke", "algorithms=[bc, iql]", "iql={expectile: 0.8}", "budgets={smoke: {offline_steps: 30}}"), None),
    (("iql={lr: 1e-4}", "dpmd={particle_selection_lambda: inf}", "seeds=[3, 4]", "deterministic=false"), None),
    (("tfg_lambda=64",), ".test/config.yaml"),
])
def test_snakemake_validate_accepts_what_diffrl_accepts(entries, configfile):
    """The Snakefile's second check, Snakemake's validate() with the schema, passes the repository's
    params.yaml, typical --config overrides (their numbers arrive as strings: '1e-4' stays one in
    YAML) and the test config."""
    from snakemake.utils import validate
    from diffrl.schema import PATH, numbers
    merged, _ = _snakemake_config(*entries, configfile=configfile)
    config.validate(merged)
    validate(numbers(merged), str(ROOT / PATH), set_default=False)
    assert _schema_errors(merged) == []


@pytest.mark.parametrize("entry, message, schema_message", [
    ("iql={expectile: 1.5}", "iql.expectile=1.5 is out of range", "greater than or equal to the maximum of 1"),
    ("budgets={smoke: {eda_critic_steps: 0}}", "budgets.smoke.eda_critic_steps=0 is out of range", "less than the minimum of 1"),
    ("stats={confidence: 1}", "stats.confidence=1.0 is out of range", "greater than or equal to the maximum of 1"),
    ("iql={lr: abc}", "iql.lr='abc' is not a number", "'abc' is not of type 'number'"),
    ("deterministic=1", "deterministic=1 is not a boolean", "1 is not of type 'boolean'"),
    ("seeds=[0, 0]", "distinct", "non-unique elements"),
    ("budget=smok", "did you mean 'smoke'", "'smok' is not one of"),
    ("iql={expectle: 0.8}", "did you mean 'iql.expectile'", "'expectle' was unexpected"),
    ("tasks={halfcheeta-medium: {}}", "'halfcheeta-medium' names no environment", "does not match"),
])
def test_bad_values_fail_diffrl_first_and_the_schema_too(entry, message, schema_message):
    merged, _ = _snakemake_config(entry)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config.validate(merged)
    assert any(schema_message in e for e in _schema_errors(merged)), _schema_errors(merged)


def test_a_stale_schema_fails_in_one_line_naming_the_fix(tmp_path):
    import json
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate
    from diffrl.schema import PATH, numbers, stale
    schema = json.loads((ROOT / PATH).read_text())
    del schema["$defs"]["DQLConfig"]["properties"]["published_lr_decay"]  # as if DQLConfig had gained it since
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    merged, _ = _snakemake_config()
    with pytest.raises(WorkflowError) as e:
        validate(numbers(merged), str(tmp_path / "schema.json"), set_default=False)
    line = stale(e.value)
    assert "\n" not in line and "Additional properties are not allowed ('published_lr_decay' was unexpected)" in line
    assert line.endswith("python -m diffrl.params --regenerate")
