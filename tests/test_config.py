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


def test_every_preset_lists_every_budget_key():
    """dvc.yaml declares `budgets.${budget}.KEY` params, and DVC fails on a key missing from
    params.yaml (a dataclass default does not help it): every preset writes every key."""
    import dataclasses
    import yaml
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["budgets"]
    keys = {f.name for f in dataclasses.fields(config.Budget)}
    assert {name: sorted(keys - set(preset)) for name, preset in raw.items()} == {n: [] for n in raw}


@pytest.mark.parametrize("overrides, message", [
    (["iql.expectle=0.8"], "did you mean 'iql.expectile'"),
    (["budgt=smoke"], "did you mean 'budget'"),
    (["iql.expectile=1.5"], "iql.expectile=1.5 is out of range"),
    (["iql.expectile=0"], "out of range"),
    (["iql.lr=abc"], "is not a number"),
    (["sac.init_temperature=-1"], "out of range"),
    (["budget=smok"], "did you mean 'smoke'"),
    (["envs=[halfcheeta]"], "did you mean 'halfcheetah'"),
    (["seeds=[0, 0]"], "distinct"),
    (["budgets.smoke.critic_steps=0"], "out of range"),
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
    with pytest.raises(KeyError, match="reads budget key 'behavior_steps' but does not declare it"):
        sp.budget.behavior_steps  # DTQL's behaviour pretraining key: changing it must not rerun bc


def test_a_stage_validates_only_the_algorithm_sections_it_reads():
    p = config.load(ROOT / "params.yaml", ["dpmd.num_particles=0"], sections=["iql"])
    assert p["iql"].expectile == 0.7 and "dpmd" not in p
    with pytest.raises(ConfigError, match="dpmd.num_particles=0 is out of range"):
        config.load(ROOT / "params.yaml", ["dpmd.num_particles=0"])
    with pytest.raises(ConfigError, match="tfg_lambda='abc' is not a number"):  # plain keys: always
        config.load(ROOT / "params.yaml", ["tfg_lambda=abc"], sections=["iql"])


def test_stage_entry_point_fails_fast_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "stages/train.py", "offline_train", "--algo", "iql", "--env", "halfcheetah", "--seed", "0",
                          "--set", "iql.expectile=1.5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip() and "settotalmass" not in l]
    assert lines == ["error: iql.expectile=1.5 is out of range: it must be < 1"], out.stderr


def test_every_offline_row_trains_its_final_policy_for_offline_steps():
    """A table compares equals: the final stage of bc, iql, the Diffusion-QL variants and DTQL reads
    offline_steps; EDA's alignment align_steps; pretraining-only runs their own keys."""
    from diffrl.algos import OFFLINE
    from diffrl.offline import budget_steps
    b = config.Budget(offline_steps=7, critic_steps=11, behavior_steps=13, energy_behavior_steps=17, align_steps=19)
    assert {r: budget_steps(r, b) for r in OFFLINE} == {**{r: 7 for r in OFFLINE}, "eda": 19}
    assert [budget_steps(s, b) for s in ("dtql_critic", "eda_critic", "dtql_behavior", "eda_behavior")] == [11, 11, 13, 17]


def test_params_reference_is_generated_from_the_dataclasses_and_params_yaml():
    """docs/params.md is `python -m diffrl.params_doc` output: regenerate it after changing a key."""
    from diffrl.params_doc import render
    assert (ROOT / "docs/params.md").read_text() == render(yaml.safe_load((ROOT / "params.yaml").read_text()))


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


def test_params_schema_is_generated_from_the_dataclasses():
    """workflow/schemas/params.schema.json is `python -m diffrl.schema` output: regenerate it after
    changing a config field or a registry section."""
    import jsonschema
    from diffrl.schema import PATH, render, schema
    assert (ROOT / PATH).read_text() == render()
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
    ("budgets={smoke: {critic_steps: 0}}", "budgets.smoke.critic_steps=0 is out of range", "less than the minimum of 1"),
    ("stats={confidence: 1}", "stats.confidence=1.0 is out of range", "greater than or equal to the maximum of 1"),
    ("iql={lr: abc}", "iql.lr='abc' is not a number", "'abc' is not of type 'number'"),
    ("deterministic=1", "deterministic=1 is not a boolean", "1 is not of type 'boolean'"),
    ("seeds=[0, 0]", "distinct", "non-unique elements"),
    ("budget=smok", "did you mean 'smoke'", "'smok' is not one of"),
    ("iql={expectle: 0.8}", "did you mean 'iql.expectile'", "'expectle' was unexpected"),
    ("envs=[halfcheeta]", "did you mean 'halfcheetah'", "'halfcheeta' is not one of"),
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
    del schema["$defs"]["IQLConfig"]["properties"]["lr"]  # as if IQLConfig had gained `lr` since
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    merged, _ = _snakemake_config()
    with pytest.raises(WorkflowError) as e:
        validate(numbers(merged), str(tmp_path / "schema.json"), set_default=False)
    line = stale(e.value)
    assert "\n" not in line and "Additional properties are not allowed ('lr' was unexpected)" in line
    assert line.endswith(f"python -m diffrl.schema > {PATH}")
