"""Environments, normalised scores and the one evaluator every algorithm uses."""
from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

warnings.filterwarnings("ignore", message=".*settotalmass.*")


@dataclass(frozen=True)
class EnvSpec:
    gym_id: str
    ref_min: float  # D4RL random-policy return
    ref_max: float  # D4RL expert return


ENVS = {
    "halfcheetah": EnvSpec("HalfCheetah-v5", -280.178953, 12135.0),
    "hopper": EnvSpec("Hopper-v5", -20.272305, 3234.3),
    "walker2d": EnvSpec("Walker2d-v5", 1.629008, 4592.3),
    # not an offline benchmark: a fast online check for SAC/SDAC/DPMD (random ~ -1200, solved ~ -150)
    "pendulum": EnvSpec("Pendulum-v1", -1200.0, -150.0),
}


# Episode seeds, declared once. A run of training seed s evaluates its learning-curve point at step k
# (gradient steps offline, environment steps online) on episodes curve_seed(s, k) + i and its final
# policy on final_seed(s) + i (i < episodes); an online run's training environment i starts from
# train_env_seed(s) + i.
CURVE_SEED = 100_000
FINAL_SEED = 1_000_000
TRAIN_ENV_SEED = 10_000


def curve_seed(seed: int, step: int) -> int:
    return CURVE_SEED + 1000 * seed + step


def final_seed(seed: int) -> int:
    return FINAL_SEED + 1000 * seed


def train_env_seed(seed: int) -> int:
    return TRAIN_ENV_SEED + 100 * seed


def env_spec(name: str) -> EnvSpec:
    if name not in ENVS:
        import difflib
        close = difflib.get_close_matches(name, ENVS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        from diffrl.fields import ConfigError
        raise ConfigError(f"unknown environment '{name}'{hint}: supported are {', '.join(ENVS)}")
    return ENVS[name]


def make_env(name: str, max_episode_steps: int = 0) -> gym.Env:
    """The gymnasium env; max_episode_steps > 0 replaces its time limit (smoke evaluations)."""
    return gym.make(env_spec(name).gym_id, **({"max_episode_steps": max_episode_steps} if max_episode_steps else {}))


def reference_scores(name: str, metadata: dict | None = None) -> dict:
    """The reference returns (R_min, R_max) that scores on env `name` are normalised with.

    `metadata` is a Minari dataset's metadata or a run's saved copy of what this returns: its
    ref_min_score and ref_max_score are used when it has both; otherwise (online rows, datasets
    without them) the built-in D4RL table (EnvSpec.ref_min/ref_max). The one place the choice is
    made. Returns {ref_min_score, ref_max_score, source}, source "dataset" or "D4RL table"."""
    meta = metadata or {}
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    if lo is None or hi is None:
        s = env_spec(name)
        return {"ref_min_score": s.ref_min, "ref_max_score": s.ref_max, "source": "D4RL table"}
    if not float(hi) > float(lo):
        raise ValueError(f"reference scores ref_min_score={lo}, ref_max_score={hi} cannot normalise scores: "
                         f"ref_max_score must be larger")
    return {"ref_min_score": float(lo), "ref_max_score": float(hi), "source": meta.get("source", "dataset")}


def normalized_score(name: str, returns, metadata: dict | None = None):
    """D4RL-normalised score 100 (R - R_min) / (R_max - R_min), with the reference returns that
    reference_scores(name, metadata) chooses (minari.get_normalized_score's formula, times 100)."""
    ref = reference_scores(name, metadata)
    lo, hi = ref["ref_min_score"], ref["ref_max_score"]
    return 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)


def evaluate(act, name: str, episodes: int, seed: int, max_steps: int = 0) -> np.ndarray:
    """Return the undiscounted return of `episodes` full episodes, run side by side.

    `act(obs[B, obs_dim]) -> actions[B, act_dim]` is called once per time step for all live
    episodes, so diffusion policies denoise the whole batch at once. Episode i is reset with
    seed `seed + i`, so an evaluation is reproducible and separate from training episodes.
    max_steps > 0 cuts episodes at that many steps (the smoke budget's max_episode_steps: such
    scores are not comparable with full-episode ones, and the summary says so).
    """
    envs = [make_env(name, max_steps) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    returns = np.zeros(episodes)
    alive = np.ones(episodes, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = np.asarray(act(obs[idx].astype(np.float32)))
        for j, i in enumerate(idx):
            o, r, term, trunc, _ = envs[i].step(actions[j])
            returns[i] += r
            obs[i] = o
            if term or trunc:
                alive[i] = False
    for e in envs:
        e.close()
    return returns


# resume: the state of a live environment, so a killed run continues bit-identically
def env_state(env) -> dict:
    """Everything needed to continue an env bit-identically: the pickled wrapper stack (MuJoCo envs
    re-create their simulator on unpickling) plus the simulator's full integration state and the
    env's RNG state."""
    u = env.unwrapped
    state = {"pickle": pickle.dumps(env), "np_random": u.np_random.bit_generator.state}
    if hasattr(u, "model") and hasattr(u, "data"):
        import mujoco
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        arr = np.empty(mujoco.mj_stateSize(u.model, spec))
        mujoco.mj_getState(u.model, u.data, arr, spec)
        state["mujoco"] = arr
    return state


def restore_env(state: dict):
    env = pickle.loads(state["pickle"])
    u = env.unwrapped
    u.np_random.bit_generator.state = state["np_random"]
    if "mujoco" in state:
        import mujoco
        mujoco.mj_setState(u.model, u.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(u.model, u.data)
    return env
