"""Algorithm registry: the rows, the params.yaml sections, and which module implements each.

MODULES is the one table saying which module of diffrl/algos/ implements a section (its config
dataclass and the agent its stage trains). Nothing here imports an algorithm module: SECTIONS
and AGENTS load a section's class on first lookup, so a job imports only the modules of the
row it trains, and diffrl.dag declares exactly those files as the job's code dependencies
(editing dpmd.py reruns the online rows, not the dataset or the offline rows).
Several sections share a class with different values (the IQL critics of IQL, DTQL and EDA; the
Diffusion-QL variants). ROWS are the summary-table rows (OFFLINE_ROWS trained on the dataset,
ONLINE trained in the environment).
"""
import importlib
from collections.abc import Iterator, Mapping

CRITICS = ("iql", "dtql_critic", "eda_critic")          # critic pretraining (IQL losses)
BEHAVIORS = ("bc", "dtql_behavior", "eda_behavior")     # behaviour pretraining
DQL_VARIANTS = {"dql": "ql", "qg": "qg", "edp": "edp", "eg_ood": "eg_ood"}  # row -> dql variant
OFFLINE = (*DQL_VARIANTS, "dtql", "eda")                # offline training on the dataset
# online rows: the fork's SAC baseline `sac` and the named SDAC/DPMD variants, each an OnlineConfig
# section. They are the keys of diffrl.algos.dpmd.VARIANTS, listed here so that naming a row does not
# import dpmd (tests/test_pipeline_graph.py checks both lists agree). GUIDED are the variants whose
# guidance strength is the top-level tfg_lambda (dpmd.GUIDED, checked the same way). Section `sac`
# is the dataset stage's SAC agent, so the `sac` row reads section `sac_online` (ROW_SECTIONS); its
# saved model is a `sac` (SACConfig) agent.
ONLINE_VARIANTS = ("sdac", "dpmd", "dpmd_tilt", "dpmd_select", "dpmd_fixnorm", "dpmd_model", "dpmd_plan", "dpmd_o2o")
GUIDED = ("dpmd_tilt", "dpmd_model")
ONLINE = ("sac", *ONLINE_VARIANTS)
ROW_SECTIONS = {"sac": "sac_online"}


def section_of(row: str) -> str:
    """The params.yaml section a row trains with (its own name, except the online `sac` row)."""
    return ROW_SECTIONS.get(row, row)


# the critic and behaviour runs an offline row starts from (cached pretraining stages)
PRETRAINED = {"dtql": ("dtql_critic", "dtql_behavior"), "eda": ("eda_critic", "eda_behavior")}

# summary-table rows: the evaluated policy of each of these runs (the 2-D bandit study runs the offline ones)
OFFLINE_ROWS = ("bc", "iql", *OFFLINE)
ROWS = (*OFFLINE_ROWS, *ONLINE)

# params section -> (module in diffrl/algos/, config dataclass, agent class its stage builds and saves).
# sac_online has no agent of its own: dpmd.train_online trains it and saves it as a `sac` agent.
MODULES: dict[str, tuple[str, str, str | None]] = {
    "sac": ("sac", "SACConfig", "SAC"),
    **{c: ("iql", "IQLConfig", "IQL") for c in CRITICS},
    "bc": ("bc", "BCConfig", "DiffusionBC"),
    "dtql_behavior": ("dtql", "DTQLBehaviorConfig", "EDMBehavior"),
    "eda_behavior": ("eda", "EDABehaviorConfig", "BottleneckBehavior"),
    **{r: ("dql", "DQLConfig", "DiffusionQL") for r in DQL_VARIANTS},
    "dtql": ("dtql", "DTQLConfig", "DTQL"),
    "eda": ("eda", "EDAConfig", "EDAAlign"),
    "sac_online": ("dpmd", "OnlineConfig", None),
    **{v: ("dpmd", "OnlineConfig", "DiffusionOnline") for v in ONLINE_VARIANTS},
}


def module_of(section: str) -> str:
    """The dotted module implementing a section, e.g. module_of('qg') == 'diffrl.algos.dql'."""
    return f"diffrl.algos.{MODULES[section][0]}"


def online_alg(row: str) -> str:
    """The `alg` an online row's section must have (its entry of diffrl.algos.dpmd.VARIANTS),
    read from the row's module on use like SECTIONS and AGENTS."""
    return importlib.import_module(module_of(section_of(row))).VARIANTS[row]["alg"]


class _ClassTable(Mapping):
    """section -> class, imported on first lookup (iterating the values imports every module)."""

    def __init__(self, index: int):
        self._index = index  # 1: config dataclass, 2: agent class

    def __getitem__(self, section: str) -> type:
        name = MODULES[section][self._index]
        if name is None:
            raise KeyError(section)
        return getattr(importlib.import_module(module_of(section)), name)

    def __contains__(self, section) -> bool:  # without importing
        return section in MODULES and MODULES[section][self._index] is not None

    def __iter__(self) -> Iterator[str]:
        return (s for s, entry in MODULES.items() if entry[self._index] is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


SECTIONS: Mapping[str, type] = _ClassTable(1)  # params section -> its config dataclass
AGENTS: Mapping[str, type] = _ClassTable(2)    # params section -> the agent class its stage trains
