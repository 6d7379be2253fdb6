"""Algorithm registry: each module owns its config dataclass, agent and update rule.

SECTIONS maps a params.yaml section to its config dataclass. Several sections share a class
with different values (the IQL critics of IQL, DTQL and EDA; the Diffusion-QL variants).
AGENTS maps a section to the agent class its stage trains; ROWS are the summary-table rows
(OFFLINE_ROWS trained on the dataset, ONLINE trained in the environment).
"""
from diffrl.algos.bc import BCConfig, DiffusionBC
from diffrl.algos.dpmd import GUIDED, VARIANTS, DiffusionOnline, OnlineConfig
from diffrl.algos.dql import DiffusionQL, DQLConfig
from diffrl.algos.dtql import DTQL, DTQLBehaviorConfig, DTQLConfig, EDMBehavior
from diffrl.algos.eda import BottleneckBehavior, EDAAlign, EDABehaviorConfig, EDAConfig
from diffrl.algos.iql import IQL, IQLConfig
from diffrl.algos.sac import SAC, SACConfig

CRITICS = ("iql", "dtql_critic", "eda_critic")          # critic pretraining (IQL losses)
BEHAVIORS = ("bc", "dtql_behavior", "eda_behavior")     # behaviour pretraining
DQL_VARIANTS = {"dql": "ql", "qg": "qg", "edp": "edp", "eg_ood": "eg_ood"}  # row -> dql variant
OFFLINE = (*DQL_VARIANTS, "dtql", "eda")                # offline training on the dataset
# online rows: the fork's SAC baseline `sac` and the named SDAC/DPMD variants, each an OnlineConfig
# section (`tfg_lambda` is top-level, see GUIDED). Section `sac` is the dataset stage's SAC agent, so
# the `sac` row reads section `sac_online` (ROW_SECTIONS); its saved model is a `sac` (SACConfig) agent.
ONLINE_VARIANTS = tuple(v for v in VARIANTS if v != "sac")  # the SDAC/DPMD variants
ONLINE = ("sac", *ONLINE_VARIANTS)
ROW_SECTIONS = {"sac": "sac_online"}


def section_of(row: str) -> str:
    """The params.yaml section a row trains with (its own name, except the online `sac` row)."""
    return ROW_SECTIONS.get(row, row)


# the critic and behaviour runs an offline row starts from (cached pretraining stages)
PRETRAINED = {"dtql": ("dtql_critic", "dtql_behavior"), "eda": ("eda_critic", "eda_behavior")}

SECTIONS = {
    "sac": SACConfig,
    **{c: IQLConfig for c in CRITICS},
    "bc": BCConfig, "dtql_behavior": DTQLBehaviorConfig, "eda_behavior": EDABehaviorConfig,
    **{r: DQLConfig for r in DQL_VARIANTS},
    "dtql": DTQLConfig, "eda": EDAConfig,
    **{section_of(v): OnlineConfig for v in ONLINE},
}
ALGORITHM_CONFIGS = SECTIONS  # what the config loader validates

AGENTS = {
    **{c: IQL for c in CRITICS},
    "bc": DiffusionBC, "dtql_behavior": EDMBehavior, "eda_behavior": BottleneckBehavior,
    **{r: DiffusionQL for r in DQL_VARIANTS},
    "dtql": DTQL, "eda": EDAAlign,
    "sac": SAC, **{v: DiffusionOnline for v in ONLINE_VARIANTS},
}

# summary-table rows: the evaluated policy of each of these runs (the 2-D bandit study runs the offline ones)
OFFLINE_ROWS = ("bc", "iql", *OFFLINE)
ROWS = (*OFFLINE_ROWS, *ONLINE)
