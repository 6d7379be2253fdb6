"""Offline data: Minari datasets (generated locally or downloaded) and the 2-D toy bandits, as numpy
arrays. The one replay buffer every algorithm samples from (offline data is loaded into it too) is in
diffrl.buffer; this module imports no torch, so the Snakefile can check datasets at parse time."""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffrl.envs import env_spec, make_env


# --------------------------------------------------------------------------- offline datasets
TRANSITION_KEYS = ("obs", "action", "reward", "next_obs", "terminal")  # what a transition holds


@dataclass
class OfflineData:
    """Flat transitions of an offline dataset plus what the algorithms need to know about it."""
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminal: np.ndarray
    episode_returns: np.ndarray
    metadata: dict

    def arrays(self) -> dict:
        return {k: getattr(self, k) for k in TRANSITION_KEYS}

    def locomotion_reward_scale(self) -> float:
        """IQL's locomotion scaling: r * 1000 / (max episode return - min episode return)."""
        spread = float(self.episode_returns.max() - self.episode_returns.min())
        return 1000.0 / spread if spread > 1e-6 else 1.0


class DatasetError(RuntimeError):
    """A missing, corrupted or mismatched dataset; the message names the file and the fix."""


def dataset_file(path: str | Path) -> Path:
    return Path(path) / "data" / "main_data.hdf5"


def file_sizes(path: str | Path) -> dict[str, int]:
    """Every file under a dataset folder and its size in bytes (recorded in its info.json)."""
    path = Path(path)
    return {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != "info.json"}


def dataset_damage(path: str | Path) -> str | None:
    """Why the dataset folder `path` is half-written or damaged, or None if it looks whole: its
    info.json (written last) is missing or unreadable, or a file it records is missing or has
    another size. A cheap check (sizes, no hashing), run before every Snakemake run."""
    path = Path(path)
    info = path / "info.json"
    try:
        recorded = json.loads(info.read_text()).get("files", {})
    except FileNotFoundError:
        return f"{info} is missing (the dataset was not finished)"
    except (ValueError, AttributeError, OSError):
        return f"{info} is unreadable"
    if not dataset_file(path).exists():
        return f"{dataset_file(path)} is missing"
    now = file_sizes(path)
    for name, size in recorded.items():
        if now.get(name) != size:
            return (f"{path / name} is missing" if name not in now else
                    f"{path / name} has {now[name]} bytes where {size} were written (truncated or overwritten)")
    return None


def set_aside_if_damaged(path: str | Path) -> Path | None:
    """Move a damaged dataset folder aside (nothing is deleted) so that the run rebuilds it; one
    warning line names the file and the folder it was moved to. Returns that folder, or None."""
    path = Path(path)
    if not path.is_dir():
        return None
    why = dataset_damage(path)
    if why is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
    path.rename(aside)
    print(f"warning: dataset {path} is damaged ({why}): moved it to {aside} and rebuilding it",
          file=sys.stderr, flush=True)
    return aside


def load_offline(path: str | Path, env_name: str) -> OfflineData:
    """Load a Minari dataset directory and check it against the environment."""
    import h5py  # noqa: F401  (minari reads through h5py)
    import minari

    path = Path(path)
    fix = f"delete {path} and rerun `snakemake {path}`"
    if not dataset_file(path).exists():
        raise DatasetError(f"dataset {path} is missing (no {dataset_file(path)}): run `snakemake {path}`")
    try:
        ds = minari.MinariDataset(str(path / "data"))
        episodes = list(ds.iterate_episodes())
    except Exception as e:
        raise DatasetError(f"dataset file {dataset_file(path)} is corrupted or truncated "
                           f"({type(e).__name__}): {fix}") from None
    if not episodes:
        raise DatasetError(f"dataset {path} holds no episodes: {fix}")
    env = make_env(env_name)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    o, a = episodes[0].observations, episodes[0].actions
    if o.shape[-1] != obs_dim or a.shape[-1] != act_dim:
        raise DatasetError(f"dataset {path} has observation/action dims {o.shape[-1]}/{a.shape[-1]} but "
                           f"{env_spec(env_name).gym_id} has {obs_dim}/{act_dim}: the dataset belongs to "
                           f"another environment; {fix}")
    cat = lambda xs: np.concatenate(xs).astype(np.float32)  # noqa: E731
    data = OfflineData(
        obs=cat([e.observations[:-1] for e in episodes]),
        action=np.clip(cat([e.actions for e in episodes]), -1, 1),
        reward=cat([e.rewards for e in episodes]),
        next_obs=cat([e.observations[1:] for e in episodes]),
        terminal=cat([e.terminations for e in episodes]),
        episode_returns=np.array([float(e.rewards.sum()) for e in episodes]),
        metadata=dict(ds.storage.metadata),
    )
    if not np.isfinite(data.obs).all() or not np.isfinite(data.reward).all():
        raise DatasetError(f"dataset {path} contains NaN or Inf values: {fix}")
    return data


def project_metadata() -> dict:
    """This project's name, version, author email and code permalink: the installed package's
    metadata, else pyproject.toml. The permalink is the first URL pyproject.toml declares, else
    "name==version"; author_email is None unless pyproject.toml declares one."""
    import importlib.metadata

    try:
        meta = importlib.metadata.metadata("diffrl")
        name, version, email = meta["Name"], meta["Version"], meta.get("Author-email")
        urls = [u.split(",", 1)[-1].strip() for u in meta.get_all("Project-URL") or []]
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        import tomllib
        project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
        name, version = project["name"], project["version"]
        email = ", ".join(a["email"] for a in project.get("authors", []) if "email" in a) or None
        urls = list(project.get("urls", {}).values())
    return {"name": name, "version": version, "author_email": email,
            "code_permalink": urls[0] if urls else f"{name}=={version}"}


def env_requirements(env_name: str) -> list[str]:
    """Pinned pip requirements (the installed versions) needed to recreate the environment of a
    dataset, in Minari's `requirements` format: gymnasium[mujoco] and mujoco for MuJoCo tasks."""
    import importlib.metadata

    import gymnasium as gym

    gym_version = importlib.metadata.version("gymnasium")
    if "mujoco" not in str(gym.spec(env_spec(env_name).gym_id).entry_point):
        return [f"gymnasium=={gym_version}"]
    return [f"gymnasium[mujoco]=={gym_version}", f"mujoco=={importlib.metadata.version('mujoco')}"]


def write_minari(out_dir: Path, dataset_id: str, episodes: list[dict], env_name: str, algorithm: str,
                 description: str, behavior_agent: dict | None = None) -> None:
    """Write episodes (dicts of observations[T+1], actions, rewards, terminations, truncations)
    as a real Minari dataset at out_dir.

    Its metadata holds D4RL's reference scores (ref_min_score, ref_max_score) of the environment,
    this project as author and code permalink (project_metadata), the pinned requirements of the
    environment (env_requirements), `algorithm` as algorithm_name, and `behavior_agent`: the
    behaviour agent as {"algorithm": algorithm, **behavior_agent} (its score and training env steps)."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    spec = env_spec(env_name)
    project = project_metadata()
    root = (out_dir.parent / f".{out_dir.name}.minari-root").resolve()
    shutil.rmtree(root, ignore_errors=True)
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        buffers = [EpisodeBuffer(id=i, seed=ep.get("seed"), observations=ep["observations"],
                                 actions=ep["actions"].astype(np.float32), rewards=ep["rewards"],
                                 terminations=ep["terminations"], truncations=ep["truncations"])
                   for i, ep in enumerate(episodes)]
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari warns about what is left out (eval_env, author_email)
            ds = minari.create_dataset_from_buffers(
                dataset_id, buffers, env=spec.gym_id, algorithm_name=algorithm,
                author=f"{project['name']} {project['version']}", author_email=project["author_email"],
                code_permalink=project["code_permalink"],
                ref_min_score=spec.ref_min, ref_max_score=spec.ref_max, description=description,
                requirements=env_requirements(env_name))
        ds.storage.update_metadata({"behavior_agent": {"algorithm": algorithm, **(behavior_agent or {})}})
        shutil.copytree(root / dataset_id, out_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _probe_remote(timeout_s: float) -> None:
    """Fail at once when the dataset server (Minari's configured hub endpoint) is unreachable."""
    from urllib.parse import urlparse

    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()


def fetch_minari(dataset_id: str, out_dir: Path, timeout_s: float = 10.0) -> None:
    """Load a Minari dataset id (downloading it when online) and copy it to out_dir.

    Offline machines get one clear line naming the local alternative, after at most one
    short network attempt (no retry loops)."""
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        local = Path(get_dataset_path(dataset_id))
        if not (local / "data").exists():
            _probe_remote(timeout_s)  # one short attempt: the hub client itself retries for half a minute
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(timeout_s)
            os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout_s)))
            os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout_s)))
            try:
                minari.load_dataset(dataset_id, download=True)
            finally:
                socket.setdefaulttimeout(old)
            local = Path(get_dataset_path(dataset_id))
    except Exception as e:
        parts = dataset_id.split("/")
        env = parts[1] if len(parts) == 3 else "hopper"  # mujoco/ENV/QUALITY-vN
        raise DatasetError(
            f"Minari dataset '{dataset_id}' is not available locally and could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no detail'}); offline? "
            f"use a generated task, built locally, instead (e.g. {env}-medium in tasks: docs/tasks.md), or check "
            f"the Minari id") from None
    shutil.copytree(local, out_dir)


# --------------------------------------------------------------------------- 2-D toy bandits
TOY_SETS = ("8gaussians", "rings", "swissroll", "moons", "checkerboard", "2spirals")


def toy_actions(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Samples of a 2-D toy distribution scaled into [-1, 1]^2 (the sets of the reference toys)."""
    if name == "8gaussians":
        k = rng.integers(0, 8, n)
        centers = np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], 1) * 0.7
        x = centers + 0.06 * rng.standard_normal((n, 2))
    elif name == "rings":
        r = rng.choice([0.25, 0.5, 0.75], n)
        th = rng.uniform(0, 2 * np.pi, n)
        x = np.stack([r * np.cos(th), r * np.sin(th)], 1) + 0.02 * rng.standard_normal((n, 2))
    elif name == "swissroll":
        th = 1.5 * np.pi * (1 + 2 * rng.uniform(0, 1, n))
        x = np.stack([th * np.cos(th), th * np.sin(th)], 1) / (4.5 * np.pi) * 0.9
        x += 0.02 * rng.standard_normal((n, 2))
    elif name == "moons":
        k = rng.integers(0, 2, n)
        th = rng.uniform(0, np.pi, n)
        x = np.where(k[:, None] == 0, np.stack([np.cos(th), np.sin(th)], 1),
                     np.stack([1 - np.cos(th), 0.5 - np.sin(th)], 1))
        x = (x - np.array([0.5, 0.25])) * 0.6 + 0.03 * rng.standard_normal((n, 2))
    elif name == "checkerboard":
        x1 = rng.uniform(-1, 1, n)
        x2 = rng.uniform(-1, 1, n) * 0.5 + (np.floor((x1 + 1) * 2) % 2) * 0.5
        x = np.stack([x1, x2 * 2 - 0.5 - (np.floor((x1 + 1) * 2) % 2) * 0.5], 1) * 0.9
    elif name == "2spirals":
        t = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
        sign = rng.choice([-1.0, 1.0], n)
        x = sign[:, None] * np.stack([-t * np.cos(t), t * np.sin(t)], 1) / (3 * np.pi) * 0.9
        x += 0.02 * rng.standard_normal((n, 2))
    else:
        raise ValueError(f"unknown toy dataset '{name}': choose one of {', '.join(TOY_SETS)}")
    return np.clip(x, -1, 1).astype(np.float32)


TOY_TARGET = np.array([0.7, 0.0], dtype=np.float32)  # the reward peaks at the 8gaussians mode at angle 0


def toy_reward(actions):
    """Bandit reward: 1 - ||a - target|| / 2 (in [0, 1] on [-1,1]^2); one mode of each set is best.
    `actions`: a numpy array, or a torch tensor (the reward is then a tensor on its device)."""
    if isinstance(actions, np.ndarray):
        return 1 - np.linalg.norm(actions - TOY_TARGET, axis=-1) / 2
    return 1 - (actions - actions.new_tensor(TOY_TARGET)).norm(dim=-1) / 2


def toy_dataset(name: str, n: int, seed: int) -> dict:
    """A one-step bandit dataset: constant state, 2-D action, reward, terminal after one step."""
    rng = np.random.default_rng(seed)
    a = toy_actions(name, n, rng)
    obs = np.zeros((n, 1), dtype=np.float32)
    return {"obs": obs, "action": a, "reward": toy_reward(a).astype(np.float32), "next_obs": obs,
            "terminal": np.ones(n, dtype=np.float32)}
