"""The two pieces every config dataclass needs: a documented field and the error type."""
from __future__ import annotations

import copy
from dataclasses import MISSING, field

# the default of a field whose one home is params.yaml (the top-level keys and the budget presets,
# which DVC reads there): the dataclass gives its type, meaning and range, never a value
REQUIRED = MISSING


class ConfigError(ValueError):
    """A bad params.yaml value or command-line override; the message is one line with the fix."""


def param(default, doc: str, low=None, high=None, low_open=False, high_open=False, choices=None):
    """A documented, range-checked config field (range and choices are checked by diffrl.config)."""
    meta = dict(doc=doc, low=low, high=high, low_open=low_open, high_open=high_open, choices=choices)
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (list, dict)) or hasattr(default, "__dataclass_fields__"):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)
