"""Algorithm registry: each module owns its config dataclass, agent and update rule.

ALGORITHM_CONFIGS maps a params.yaml section to its config dataclass; ROWS maps a summary-table
row to the agent class whose checkpoint the evaluation stage loads.
"""
from diffrl.algos.bc import BCConfig, DiffusionBC
from diffrl.algos.iql import IQL, IQLConfig
from diffrl.algos.sac import SACConfig

ALGORITHM_CONFIGS = {"sac": SACConfig, "iql": IQLConfig, "bc": BCConfig}

ROWS = {"bc": DiffusionBC, "iql": IQL}
