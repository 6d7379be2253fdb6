"""The 2-D bandit study: every offline algorithm on a toy dataset (one constant state, 2-D
action, reward peaking at one mode), pretraining included, in one process per (dataset, seed).

What it measures: the mean reward of each policy's actions against the best and the mean reward
in the data, and how much of the policy stays on the data's support."""
from __future__ import annotations

import dataclasses

import numpy as np

from diffrl.algos import AGENTS, PRETRAINED, REGISTRY, extra_args
from diffrl.data import toy_dataset, toy_reward
from diffrl.pipeline import toy_steps_key

# torch and the training loop are imported where a run trains: the plot and the table (bandit_plot,
# bandit_summary) read saved actions with numpy alone

ON_SUPPORT = 0.1  # a policy action within this distance of some data action is "on support"


def _build(section: str, cfg, device, steps: int, budget, parts=None):
    from diffrl.utils import compiled
    cls = AGENTS[section]
    if getattr(cfg, "orthogonal_init", False):
        # DTQL's released init has zero biases: on the toys' constant zero state every ReLU unit of
        # its one-step policy would start dead, so the toys keep PyTorch's default init
        cfg = dataclasses.replace(cfg, orthogonal_init=False)
    # the budget keys its agent takes (its registry entry's budget_args), read only when it takes them
    from_budget = {arg: (lambda key=key: getattr(budget, key)) for arg, key in REGISTRY[section].budget_args.items()}
    extra = extra_args(section, reward_scale=1.0, total_steps=steps, **from_budget)
    if section in PRETRAINED:
        return compiled(cls(1, 2, cfg, parts["behavior"], parts["critic"], device, **extra))
    return compiled(cls(1, 2, cfg, device, **extra))


def toy_steps(section: str, budget) -> int:
    """A section's steps in the study: toy_steps, or the budget key its registry entry names
    (diffrl.pipeline.toy_steps_key)."""
    return getattr(budget, toy_steps_key(section))


def run_bandit(name: str, row: str, seed: int, configs: dict, budget, n_samples: int, device="cpu",
               log=print) -> dict:
    """Train one row (and the critic and behaviour it starts from) on toy set `name` with `seed`;
    return its policy's actions [n_samples, 2], the data and the trained agent."""
    import torch
    from diffrl.buffer import ReplayBuffer
    from diffrl.train import train_offline
    data = toy_dataset(name, budget.toy_samples, seed=0)
    buf = ReplayBuffer.from_arrays(data, device)
    trained = {}
    for section in (*PRETRAINED.get(row, ()), row):
        steps = toy_steps(section, budget)
        torch.manual_seed(seed)
        parts = None
        if section in PRETRAINED:
            critic, behavior = PRETRAINED[section]
            parts = {"critic": trained[critic], "behavior": trained[behavior]}
        agent = _build(section, configs[section], device, steps, budget, parts)
        train_offline(agent, buf, steps=steps, batch_size=configs[section].batch_size, seed=seed, run_dir=None,
                      env_name=None, eval_every=steps, curve_episodes=1, desc=f"{name} {section} seed {seed}")
        trained[section] = agent
        log(f"{name} seed {seed}: trained {section} ({steps} steps)")
    agent = trained[row].eval()
    actions = agent.act(np.zeros((n_samples, 1), np.float32), generator=torch.Generator(device=device).manual_seed(seed))
    return {"actions": np.asarray(actions), "data": data, "agent": agent}


def bandit_metrics(name: str, seed: int, actions: dict, data: dict) -> list[dict]:
    rows = []
    d = np.asarray(data["action"], dtype=np.float64)
    for algo, a in actions.items():
        a64 = np.asarray(a, dtype=np.float64)
        nearest = np.sqrt(((a64[:, None, :] - d[None]) ** 2).sum(-1).min(1))  # to the closest data action
        rows.append({"dataset": name, "algorithm": algo, "seed": seed,
                     "policy_reward_mean": float(toy_reward(a).mean()),
                     "data_reward_best": float(data["reward"].max()),
                     "data_reward_mean": float(data["reward"].mean()),
                     "on_support": float((nearest < ON_SUPPORT).mean())})
    return rows


def plot_bandit(name: str, data: dict, actions_by_seed: list[dict], path, cols: int = 4) -> None:
    """One panel per algorithm (`cols` a row): its samples (all seeds) over the data, coloured by reward."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    algos = list(actions_by_seed[0])
    rows = int(np.ceil(len(algos) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax, algo in zip(axes.flat, algos):
        ax.scatter(data["action"][:, 0], data["action"][:, 1], c="lightgray", s=2, label="data")
        a = np.concatenate([s[algo] for s in actions_by_seed])
        sc = ax.scatter(a[:, 0], a[:, 1], c=toy_reward(a), s=3, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{algo}: reward {toy_reward(a).mean():.2f}", fontsize=9)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(algos):]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes.ravel().tolist(), shrink=0.6, label="reward")
    fig.suptitle(f"{name}: policy samples over the behaviour data ({len(actions_by_seed)} seeds)")
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
