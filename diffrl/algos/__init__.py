"""The registry: every params.yaml section that a stage trains or evaluates, declared once.

Each entry of REGISTRY says which module of diffrl/algos/ implements the section (its config
dataclass and the agent its stage trains and saves), its kind (which stage trains it), the
pretraining it starts from, the budget key of its step count, the extra top-level params.yaml
keys it reads, and its measured cost. A tilted row (kind `tilted`) is trained by no stage: it names
the offline row whose trained policy the evaluate stage samples under its tilt, and the row whose
critic tilts it when that policy has none. Everything else is derived from it: the row tuples below,
the Snakemake rules' wildcards and dvc.yaml's stages (diffrl.dag), the budget keys a job reads
(diffrl.pipeline), the cluster requests (diffrl.resources), the bandit study, the summary table.
docs/extending.md shows how to add an algorithm: one module, one entry here, one params.yaml
section, one test.

Nothing here imports an algorithm module: SECTIONS and AGENTS load a section's class on first
lookup, so a job imports only the modules of the row it trains, and diffrl.dag declares exactly
those files as the job's code dependencies (editing dpmd.py reruns the online rows, not the
dataset or the offline rows). Several sections share a class with different values (the IQL
critics of IQL, DTQL and EDA; the Diffusion-QL variants).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

# kind -> the stage that trains a section of that kind (the dataset stage trains the `sac` section;
# a tilted row is not trained: the evaluate stage evaluates its base row's run under its tilt);
# offline, online and tilted sections are the rows of the summary tables
KIND_STAGES = {"dataset": "dataset", "critic": "critic_pretrain", "behavior": "behavior_pretrain",
               "offline": "offline_train", "online": "online_train", "tilted": "evaluate"}


@dataclass(frozen=True)
class Section:
    """One trained params.yaml section."""
    module: str                      # file diffrl/algos/{module}.py implementing it
    config: str                      # its config dataclass (the params.yaml section's type)
    agent: str | None                # the agent class its stage builds and saves (None: saved as another's)
    kind: str                        # a key of KIND_STAGES
    steps_key: str = ""              # the budget key of its gradient steps (offline, critic, behavior)
    pretrained: tuple[str, ...] = ()  # (critic, behaviour) sections an offline row starts from
    top_keys: tuple[str, ...] = ()   # top-level params.yaml keys it reads besides its section (tfg_lambda)
    runs: tuple[str, ...] = ()       # other modules of diffrl/algos/ whose agent its stage runs
    base: str = ""                   # tilted rows: the offline row whose trained policy they evaluate
    critic_row: str = ""             # tilted rows: the row whose critic tilts that policy ('' = the base's own)
    # seconds per gradient step (offline) or per update (online): (one CPU core, one GPU); CPU figures
    # measured with benchmarks/bench_steps.py and bench_online.py (studies/speed/README.md), GPU figures
    # conservative estimates for small MLPs. They size cluster requests (diffrl.resources).
    step_s: tuple[float, float] = (0.0, 0.0)
    act_s: tuple[float, float] = (0.0, 0.0)  # seconds to choose one action for one state (rows)
    # constructor arguments its agent takes from the selected budget preset (argument -> budget key): the
    # stages that build it pass them, and its jobs declare those keys (diffrl.pipeline.budget_keys)
    budget_args: dict[str, str] = field(default_factory=dict)
    # a one-off pass over the data's states before its first step (e.g. drawing a support set): seconds per
    # state on (one CPU core, one GPU), for as many states as the budget key `setup_states` says (0: all)
    setup_s: tuple[float, float] = (0.0, 0.0)
    setup_states: str = ""
    toy_steps_key: str = "toy_steps"  # the budget key of its steps in the 2-D bandit study
    title: str = ""                  # its name in the report's labels ('' = its row name)
    steps_label: str = ""            # the report's name for its steps when they are not the shared key's

    def __post_init__(self):
        if self.kind not in KIND_STAGES:
            raise ValueError(f"registry: kind {self.kind!r} of {self.module}.{self.config}: use one of "
                             f"{', '.join(KIND_STAGES)}")
        if (self.kind == "tilted") != bool(self.base):
            raise ValueError(f"registry: a tilted row names its base row, and only a tilted row does "
                             f"({self.module}.{self.config}, base {self.base!r})")


_IQL = dict(module="iql", config="IQLConfig", agent="IQL")
# DTQL's and EDA's critic pretraining: IQL's critic step alone, no AWR policy step
_IQL_CRITIC = dict(_IQL, agent="IQLCritic", kind="critic")
_DQL = dict(module="dql", config="DQLConfig", agent="DiffusionQL", kind="offline", steps_key="offline_steps",
            step_s=(0.045, 0.012), act_s=(0.004, 0.003))
_DPMD = dict(module="dpmd", config="OnlineConfig", agent="DiffusionOnline", kind="online", act_s=(0.006, 0.003))
TILT = ("tfg_lambda",)  # the guided variants: the top-level tfg_lambda is their guidance strength
# tilted rows: seconds per action at params.yaml's tilt settings (lambda 0, 32 particles, no MALA); CPU
# measured with benchmarks/bench_tilts.py (studies/speed/README.md), GPU conservative estimates
_TILTED = dict(module="tilted", config="TiltRowConfig", agent=None, kind="tilted")

REGISTRY: dict[str, Section] = {
    # the dataset stage's SAC behaviour agent (one SAC update and one env step per step)
    "sac": Section("sac", "SACConfig", "SAC", "dataset", step_s=(0.008, 0.004)),
    # pretraining of DTQL and EDA
    "dtql_critic": Section(**_IQL_CRITIC, steps_key="dtql_pretrain_steps", step_s=(0.008, 0.003)),
    "eda_critic": Section(**_IQL_CRITIC, steps_key="eda_critic_steps", step_s=(0.006, 0.003)),
    "dtql_behavior": Section("dtql", "DTQLBehaviorConfig", "EDMBehavior", "behavior", "dtql_pretrain_steps",
                             step_s=(0.012, 0.004)),
    # batch 2048 through the bottleneck energy net: its own, smaller step count (in the bandit study too)
    "eda_behavior": Section("eda", "EDABehaviorConfig", "BottleneckBehavior", "behavior", "energy_behavior_steps",
                            step_s=(1.0, 0.03), toy_steps_key="energy_behavior_steps",
                            steps_label="energy behaviour"),
    # offline rows: each row's steps key holds its reference's schedule in the paper preset; the smoke and
    # quick presets give every final policy but EDA's the same steps, so a table compares equals. EDA's
    # alignment has align_steps (about 10x a Diffusion-QL step on a CPU; 200k published against 2M)
    "bc": Section("bc", "BCConfig", "DiffusionBC", "offline", "offline_steps", step_s=(0.008, 0.003),
                  act_s=(0.002, 0.002)),
    "iql": Section(**_IQL, kind="offline", steps_key="iql_steps", step_s=(0.008, 0.003), act_s=(0.0005, 0.0005),
                   steps_label="gradient"),
    "dql": Section(**_DQL),
    "qg": Section(**_DQL),
    "edp": Section(**{**_DQL, "step_s": (0.035, 0.010)}),
    "eg_ood": Section(**_DQL),
    "dtql": Section("dtql", "DTQLConfig", "DTQL", "offline", "dtql_steps", ("dtql_critic", "dtql_behavior"),
                    step_s=(0.060, 0.012), act_s=(0.003, 0.002), steps_label="policy"),
    # 256 states x 16 support actions through two energy nets; before alignment it draws 16 behaviour
    # samples (15-step solver) for each of align_support_states dataset states, its support set
    "eda": Section("eda", "EDAConfig", "EDAAlign", "offline", "align_steps", ("eda_critic", "eda_behavior"),
                   step_s=(0.6, 0.02), act_s=(0.02, 0.01), budget_args={"support_states": "align_support_states"},
                   setup_s=(0.017, 0.0005), setup_states="align_support_states", toy_steps_key="align_steps",
                   title="EDA", steps_label="alignment"),
    # online rows (one update per 5 env steps; batch 256, T=20, the variant's particles; sdac's reference
    # loss draws a second particle sample every other update). sac_online is the `sac` row's section
    # (section `sac` is the dataset agent): a SACOnlineConfig (SACConfig and the loop's num_envs and
    # warmup) whose SAC agent the online loop trains and saves as a `sac` agent.
    "sac_online": Section("sac", "SACOnlineConfig", None, "online", step_s=(0.012, 0.004), act_s=(0.006, 0.003)),
    "sdac": Section(**_DPMD, step_s=(1.6, 0.04)),
    "dpmd": Section(**_DPMD, step_s=(0.9, 0.03)),
    "dpmd_tilt": Section(**{**_DPMD, "act_s": (0.12, 0.03)}, top_keys=TILT, step_s=(25.0, 0.5)),
    "dpmd_select": Section(**{**_DPMD, "act_s": (0.015, 0.004)}, step_s=(3.6, 0.06)),
    "dpmd_fixnorm": Section(**_DPMD, step_s=(0.9, 0.03)),
    "dpmd_model": Section(**{**_DPMD, "act_s": (0.05, 0.01)}, top_keys=TILT, step_s=(7.9, 0.2)),
    "dpmd_plan": Section(**_DPMD, step_s=(1.1, 0.03)),
    "dpmd_o2o": Section(**_DPMD, step_s=(0.3, 0.02)),
    # tilted evaluation rows (diffrl.algos.tilted): a trained offline policy of the same env and seed
    # sampled under an inference-time tilt, no training; BC has no critic and takes the iql row's
    "bc_tilt": Section(**_TILTED, base="bc", critic_row="iql", act_s=(0.0025, 0.002)),
    "dql_tilt": Section(**_TILTED, base="dql", act_s=(0.0025, 0.002)),
    "dtql_tilt": Section(**_TILTED, base="dtql", act_s=(0.012, 0.005)),
    "eda_tilt": Section(**_TILTED, base="eda", act_s=(0.062, 0.015)),
}
ROW_SECTIONS = {"sac": "sac_online"}  # a row whose section has another name
SECTION_ROWS = {s: r for r, s in ROW_SECTIONS.items()}


def section_of(row: str) -> str:
    """The params.yaml section a row trains with (its own name, except the online `sac` row)."""
    return ROW_SECTIONS.get(row, row)


def row_of(section: str) -> str:
    return SECTION_ROWS.get(section, section)


def of_kind(kind: str) -> tuple[str, ...]:
    """The sections of one kind, in registry order (rows: their row names)."""
    return tuple(row_of(s) for s, e in REGISTRY.items() if e.kind == kind)


CRITICS = of_kind("critic")          # critic pretraining (IQL losses)
BEHAVIORS = of_kind("behavior")      # behaviour pretraining
OFFLINE = of_kind("offline")         # trained on the dataset: the offline table rows
ONLINE = of_kind("online")           # online training in the environment: the online table rows
TILTED = of_kind("tilted")           # evaluated under a tilt from a base row's run: rows without training
ROWS = (*OFFLINE, *ONLINE, *TILTED)  # summary-table rows
ONLINE_VARIANTS = tuple(r for r in ONLINE if r != "sac")  # the SDAC/DPMD variants
GUIDED = tuple(r for r in ONLINE if "tfg_lambda" in REGISTRY[section_of(r)].top_keys)
PRETRAINED = {s: e.pretrained for s, e in REGISTRY.items() if e.pretrained}
TILT_BASES = {r: REGISTRY[r].base for r in TILTED}  # tilted row -> the row whose policy it tilts
DQL_VARIANTS = {r: r if r != "dql" else "ql" for r in OFFLINE if REGISTRY[r].module == "dql"}  # row -> variant


def evaluated_runs(row: str) -> tuple[str, ...]:
    """The runs (rows of the same env and seed) an evaluation of `row` loads: its own, or for a
    tilted row its base row's and the row whose critic tilts it."""
    entry = REGISTRY[section_of(row)]
    if entry.kind != "tilted":
        return (row,)
    return (entry.base, entry.critic_row) if entry.critic_row else (entry.base,)


def published_settings(section: str, task: str) -> dict:
    """A section's published settings for one task (D4RL name without version), {} when its reference
    publishes none for it: its module's PUBLISHED_TASKS, task -> {section: {key: value}}, each table
    citing its source (docs/fidelity.md, "Per-task settings")."""
    table = getattr(importlib.import_module(module_of(section)), "PUBLISHED_TASKS", {})
    return dict(table.get(task, {}).get(section, {}))


def module_of(section: str) -> str:
    """The dotted module implementing a section, e.g. module_of('qg') == 'diffrl.algos.dql'."""
    return f"diffrl.algos.{REGISTRY[section].module}"


class _ClassTable(Mapping):
    """section -> class, imported on first lookup (iterating the values imports every module)."""

    def __init__(self, field: str):
        self._field = field  # "config": config dataclass, "agent": agent class

    def __getitem__(self, section: str) -> type:
        name = getattr(REGISTRY[section], self._field)
        if name is None:
            raise KeyError(section)
        return getattr(importlib.import_module(module_of(section)), name)

    def __contains__(self, section) -> bool:  # without importing
        return section in REGISTRY and getattr(REGISTRY[section], self._field) is not None

    def __iter__(self) -> Iterator[str]:
        return (s for s, e in REGISTRY.items() if getattr(e, self._field) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


SECTIONS: Mapping[str, type] = _ClassTable("config")  # params section -> its config dataclass
AGENTS: Mapping[str, type] = _ClassTable("agent")     # params section -> the agent class its stage trains


def extra_args(section: str, **available) -> dict:
    """The constructor arguments the agent of `section` takes besides its config (the class's
    `extra_args`, e.g. IQL's reward_scale), picked from the values a caller has; a callable value
    is called only when the agent takes it (a stage reads only the budget keys it declares)."""
    wanted = getattr(AGENTS[section], "extra_args", ())
    return {k: available[k]() if callable(available[k]) else available[k] for k in wanted}
