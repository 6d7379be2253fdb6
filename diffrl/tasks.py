"""Tasks: an environment plus a dataset, named as D4RL names its datasets without the version.

`halfcheetah-medium`, `hopper-medium-replay`, `walker2d-medium-expert`: a dataset the pipeline
generates locally for that environment (docs/data.md defines each quality as D4RL does). A Minari
dataset id (`mujoco/hopper/medium-v0`) is a task as itself: the dataset is fetched, and its
environment is read from the id. `tasks:` in params.yaml maps each task the graph builds to what
it changes for that task (`{}`: nothing). Torch-free: the Snakefile parses with it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ENV_NAMES = ("halfcheetah", "hopper", "walker2d")
# a generated dataset's quality -> the behaviour it holds (docs/data.md)
QUALITIES = {
    "random": "uniform random actions",
    "medium": "rollouts of the SAC agent frozen when its evaluation score first reaches "
              "dataset.medium_target_score",
    "medium-replay": "the SAC agent's training episodes up to that point (its replay buffer)",
    "expert": "rollouts of the SAC agent at the end of its run",
    "medium-expert": "the medium and the expert rollouts together",
}
# the qualities drawn from the environment's SAC agent (stage `data_agent`)
FROM_AGENT = ("medium", "medium-replay", "expert", "medium-expert")
MINARI_ID = re.compile(r"^[a-z0-9_]+/([a-z0-9_]+)/[a-z0-9_-]+-v\d+$")
# a task as a wildcard (paths hold the name itself: a Minari id's runs are under runs/mujoco/hopper/medium-v0/)
PATTERN = "(?:" + "|".join(ENV_NAMES) + ")-(?:" + "|".join(map(re.escape, QUALITIES)) + r")|[a-z0-9_]+/[a-z0-9_]+/[a-z0-9_-]+-v\d+"


@dataclass(frozen=True)
class Task:
    name: str           # as params.yaml lists it
    env: str            # the environment its policies act in
    quality: str = ""   # a generated dataset's quality ('' for a Minari id)
    minari_id: str = ""  # a fetched dataset's id ('' for a generated one)

    @property
    def needs_agent(self) -> bool:
        """Whether its dataset is drawn from its environment's SAC agent."""
        return self.quality in FROM_AGENT


def parse(name: str) -> Task:
    """The task a name denotes; a bad name gets one line naming the fix."""
    name = str(name)
    m = MINARI_ID.match(name)
    if m:
        env = m.group(1)
        if env not in ENV_NAMES:
            raise ValueError(f"tasks: Minari id '{name}' is for environment '{env}', which the pipeline does not "
                             f"build (known: {', '.join(ENV_NAMES)})")
        return Task(name, env, minari_id=name)
    for env in ENV_NAMES:
        if name.startswith(env + "-"):
            quality = name[len(env) + 1:]
            if quality in QUALITIES:
                return Task(name, env, quality=quality)
            raise ValueError(f"tasks: '{name}' has no dataset quality '{quality}': use {env}-QUALITY with QUALITY "
                             f"one of {', '.join(QUALITIES)}, or a Minari id such as mujoco/{env}/medium-v0")
    raise ValueError(f"tasks: '{name}' names no environment: use ENV-QUALITY (ENV one of {', '.join(ENV_NAMES)}, "
                     f"e.g. hopper-medium-replay) or a Minari id such as mujoco/hopper/medium-v0")


def agent_envs(tasks) -> list[str]:
    """The environments whose SAC agent some task's dataset is drawn from, in task order."""
    return list(dict.fromkeys(t.env for t in map(parse, tasks) if t.needs_agent))


def scopes(tasks) -> list[str]:
    """What a summary can cover: each task, each environment with a task, and `suite` (all tasks)."""
    parsed = [parse(t) for t in tasks]
    return [t.name for t in parsed] + list(dict.fromkeys(t.env for t in parsed)) + ["suite"]


def in_scope(scope: str, tasks) -> list[str]:
    """The tasks a summary scope covers: one task, an environment's tasks, or all of them."""
    parsed = [parse(t) for t in tasks]
    if scope == "suite":
        return [t.name for t in parsed]
    if scope in ENV_NAMES:
        return [t.name for t in parsed if t.env == scope]
    return [parse(scope).name]
