"""The replay buffer: transitions held as tensors on the training device, sampled by the shared loops.
(diffrl.data, which reads and writes datasets on disk, imports no torch: the Snakefile uses it.)"""
from __future__ import annotations

import numpy as np
import torch

from diffrl.data import TRANSITION_KEYS


class ReplayBuffer:
    """Fixed-capacity ring buffer of transitions held as tensors on the training device."""

    KEYS = TRANSITION_KEYS

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device="cpu"):
        self.capacity, self.device = int(capacity), torch.device(device)
        shapes = {"obs": (obs_dim,), "action": (act_dim,), "reward": (), "next_obs": (obs_dim,), "terminal": ()}
        self.data = {k: torch.zeros((self.capacity, *s), dtype=torch.float32, device=self.device)
                     for k, s in shapes.items()}
        self.size, self.ptr = 0, 0

    def add(self, **batch) -> None:
        """Add a batch of transitions (numpy or tensors, leading batch dim)."""
        n = len(batch["obs"])
        idx = (self.ptr + torch.arange(n)) % self.capacity
        for k in self.KEYS:
            self.data[k][idx.to(self.device)] = torch.as_tensor(np.asarray(batch[k]), dtype=torch.float32,
                                                                device=self.device).reshape(n, *self.data[k].shape[1:])
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        idx = torch.randint(0, self.size, (batch_size,), generator=generator).to(self.device)
        return {k: v[idx] for k, v in self.data.items()}

    @classmethod
    def from_arrays(cls, arrays: dict, device="cpu") -> "ReplayBuffer":
        n = len(arrays["obs"])
        buf = cls(arrays["obs"].shape[1], arrays["action"].shape[1], n, device)
        buf.add(**{k: arrays[k] for k in cls.KEYS})
        return buf

    def state_dict(self) -> dict:
        return {"data": {k: v[: self.size].cpu() for k, v in self.data.items()}, "size": self.size, "ptr": self.ptr}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["data"].items():
            self.data[k][: len(v)] = v.to(self.device)
        self.size, self.ptr = state["size"], state["ptr"]
