"""workflow/schemas/params.schema.json, generated: the JSON Schema of params.yaml.

Built from the same config dataclasses as diffrl.config's validation and docs/params.md (each
field's type, default, help text, range and choices; the algorithm sections through the registry),
so editors complete and check params.yaml, and the Snakefile checks the merged config with
Snakemake's validate() after diffrl.config.validate:
    python -m diffrl.params --regenerate     (tests/test_config.py fails when it is stale)
Regenerate it after adding or changing a config field or a registry section. No stage imports this
module, so editing it reruns nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

from diffrl.algos import KIND_STAGES, OFFLINE, REGISTRY, ROWS, SECTIONS, module_of
from diffrl.config import BUDGET_NAMES, SECTION_TYPES, Budget, Params, _default, kind_of
from diffrl.params import _summary

ROOT = Path(__file__).resolve().parents[1]
PATH = "workflow/schemas/params.schema.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"  # the draft Snakemake's validate() checks with
TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _items() -> dict[tuple[str, str], dict]:
    """The elements of list fields, which param() metadata does not describe: what
    diffrl.config.validate checks them against, as (class, field) -> item schema."""
    from diffrl.data import TOY_SETS
    return {("Params", "algorithms"): {"enum": list(ROWS)},
            ("Params", "toy_sets"): {"enum": list(TOY_SETS)},
            ("Params", "bandit_sets"): {"enum": list(TOY_SETS)},
            ("Params", "seeds"): {"type": "integer", "minimum": 0},
            ("Budget", "below_regime"): {"enum": list(OFFLINE)}}


def field_schema(cls, f: dataclasses.Field) -> dict:
    """One field: type, description (its help text), default, range or choices."""
    default, meta = _default(f), f.metadata
    out = {"type": TYPES[kind_of(f)], "description": meta.get("doc", "")}
    if default is not None and not (isinstance(default, float) and not math.isfinite(default)):  # JSON has no inf
        out["default"] = list(default) if isinstance(default, tuple) else default
    if meta.get("choices"):
        out["enum"] = list(meta["choices"])
    if meta.get("low") is not None:
        out["exclusiveMinimum" if meta["low_open"] else "minimum"] = meta["low"]
    if meta.get("high") is not None:
        out["exclusiveMaximum" if meta["high_open"] else "maximum"] = meta["high"]
    items = _items().get((cls.__name__, f.name))
    if (cls.__name__, f.name) == ("Params", "tasks"):  # task name -> {section: {key: value}} (diffrl.tasks)
        from diffrl.tasks import PATTERN
        out.update(minProperties=1, propertyNames={"pattern": f"^(?:{PATTERN})$"},
                   additionalProperties={"type": ["object", "null"]})
    elif items is not None:
        out["items"] = items
        if f.name == "seeds":
            out.update(minItems=1, uniqueItems=True)
    elif isinstance(default, dict) and default:
        kinds = {TYPES[type(v)] for v in default.values()}
        if len(kinds) == 1:  # a mapping of like values, e.g. env -> number
            out["additionalProperties"] = {"type": kinds.pop()}
    return out


def _required(cls) -> list[str]:
    """The fields with no dataclass default (REQUIRED: params.yaml holds their values)."""
    return [f.name for f in dataclasses.fields(cls) if _default(f) is None]


def class_schema(cls) -> dict:
    """A config dataclass as an object schema; unknown keys are errors. A section's keys are optional
    (they take the dataclass default) and an empty section (YAML null) is allowed; a budget preset
    sets every key."""
    required = _required(cls)
    out = {"type": "object" if required else ["object", "null"], "description": _summary(cls),
           "additionalProperties": False, "properties": {f.name: field_schema(cls, f) for f in dataclasses.fields(cls)}}
    return {**out, "required": required} if required else out


def schema() -> dict:
    top = {f.name: f for f in dataclasses.fields(Params)}
    defs, props = {}, {}

    def ref(cls, description: str) -> dict:
        defs.setdefault(cls.__name__, class_schema(cls))
        return {"$ref": f"#/$defs/{cls.__name__}", "description": description}

    for name, f in top.items():
        if name in SECTION_TYPES:
            props[name] = ref(SECTION_TYPES[name], f.metadata["doc"])
        elif name == "budgets":
            props[name] = {"type": "object", "description": f.metadata["doc"], "additionalProperties": False,
                           "properties": {b: ref(Budget, f"the {b} preset") for b in BUDGET_NAMES},
                           "required": list(BUDGET_NAMES)}
        else:
            props[name] = field_schema(Params, f)
    for section, entry in REGISTRY.items():
        cls = SECTIONS[section]
        where = module_of(section).replace(".", "/") + ".py"
        role = "a tilted row evaluated" if entry.kind == "tilted" else "trained"
        props[section] = ref(cls, f"{cls.__name__} ({where}), {role} by the {KIND_STAGES[entry.kind]} stage")
    return {"$schema": DRAFT, "title": "params.yaml",
            "description": "diffrl's params.yaml, generated by `python -m diffrl.params --regenerate` from the config "
                           "dataclasses (docs/params.md has the same keys with their values)",
            "type": "object", "additionalProperties": False, "properties": props, "required": _required(Params),
            "$defs": defs}


def render() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def numbers(raw: dict, node: dict | None = None, defs: dict | None = None) -> dict:
    """A copy of a params mapping with the numbers YAML leaves as strings ('1e-4', 'inf', as a
    nested `--config 'iql={lr: 1e-4}'` gives them) made numbers, as diffrl.config reads them, so
    that the schema does not reject what diffrl accepts."""
    if node is None:
        node = json.loads((ROOT / PATH).read_text())
        defs = node["$defs"]
    node = defs[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
    out = copy.deepcopy(raw)
    if not isinstance(out, dict):
        return out
    props = node.get("properties", {})
    for key, value in out.items():
        sub = props.get(key) or node.get("additionalProperties")
        if not isinstance(sub, dict):
            continue
        if isinstance(value, dict):
            out[key] = numbers(value, sub, defs)
        elif isinstance(value, str) and sub.get("type") in ("number", "integer"):
            try:
                out[key] = float(value)
            except ValueError:
                pass  # not a number: the schema says so
    return out


def stale(error: Exception) -> str:
    """One line for a config that passes diffrl.config.validate but not the schema (Snakemake's
    validate() raises a WorkflowError from the jsonschema error, whose text holds the whole schema):
    where, what, and the fix, since the two checks disagree only when the schema is stale."""
    cause = error.__cause__ or error.__context__  # the jsonschema ValidationError
    what = f"{cause.json_path}: {cause.message}" if hasattr(cause, "json_path") else str(error).splitlines()[0]
    return (f"the config passes diffrl's checks but not {PATH} ({what}): regenerate it after changing a "
            f"config dataclass or the registry: python -m diffrl.params --regenerate")

