"""Diffusion behaviour cloning: the `bc` row.
DDPM eps-prediction on dataset actions with the discrete VP schedule (T=5). As in the released
Diffusion-QL code (bc_diffusion.py) the row is evaluated with one sample of the trained network;
an EMA copy is kept as an option (`eval_ema`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from diffrl.diffusion import DiffusionSchedule
from diffrl.fields import param
from diffrl.nets import adam, NoiseNet


@dataclass
class BCConfig:
    """Diffusion behaviour cloning (Diffusion-QL's `bc` variant)."""
    T: int = param(5, "diffusion steps", low=1)
    beta_min: float = param(0.1, "VP schedule b_min", low=0, low_open=True)
    beta_max: float = param(10.0, "VP schedule b_max", low=0, low_open=True)
    lr: float = param(3e-4, "Adam learning rate", low=0, low_open=True)
    batch_size: int = param(256, "minibatch size", low=1)
    hidden: int = param(256, "hidden width of the noise net", low=1)
    layers: int = param(3, "hidden layers of the noise net", low=1)
    ema_decay: float = param(0.995, "EMA decay of the evaluated copy", low=0, high=1)
    ema_every: int = param(5, "gradient steps between EMA updates", low=1)
    ema_start: int = param(1000, "gradient step at which EMA tracking starts", low=0)
    ema_copy_before_start: bool = param(False, "ours: copy the network into the EMA before ema_start (the "
                                        "released EMA stays at the initial weights until then)")
    eval_ema: bool = param(False, "ours: act with the EMA copy (the released code acts with the trained network)")
    grad_clip: float = param(0.0, "max grad norm (0 = off)", low=0)


class DiffusionBC(torch.nn.Module):
    name = "bc"
    config_cls = BCConfig

    def __init__(self, obs_dim: int, act_dim: int, cfg: BCConfig, device="cpu"):
        super().__init__()
        self.cfg, self.act_dim = cfg, act_dim
        self.eps = NoiseNet(obs_dim, act_dim, cfg.hidden, cfg.layers)
        self.eps_ema = copy.deepcopy(self.eps).requires_grad_(False)
        self.schedule = DiffusionSchedule.make("vp", cfg.T, device, beta_min=cfg.beta_min, beta_max=cfg.beta_max)
        self.to(device)
        self.opt = adam(self.eps.parameters(), cfg.lr)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def update(self, b: dict, generator=None) -> dict:
        loss = self.schedule.loss(self.eps, b["action"], b["obs"], generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.eps.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        ema_update(self.eps_ema, self.eps, int(self.step), self.cfg)
        return {"bc_loss": loss.detach()}

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator=None, ema: bool | None = None) -> torch.Tensor:
        """Samples of the evaluated network: the EMA copy if `ema` (default: cfg.eval_ema)."""
        ema = self.cfg.eval_ema if ema is None else ema
        return self.schedule.sample(self.eps_ema if ema else self.eps, obs, self.act_dim, generator)

    # What the evaluated policy samples with where it is not the DDPM chain of `schedule` (None: that
    # chain, which an inference-time tilt can guide; diffrl/algos/tilted.py).
    eval_sampler = None

    @torch.no_grad()
    def choose(self, obs: torch.Tensor, draw, generator=None) -> torch.Tensor:
        """The evaluation choice over `draw(obs, generator)`: one sample per state (the released bc
        row). act's only path, so a tilted row that draws otherwise chooses exactly as this row does."""
        return draw(obs, generator)

    @torch.no_grad()
    def act(self, obs: np.ndarray, generator=None) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.step.device)
        return self.choose(o, self.sample, generator).cpu().numpy()


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, cfg) -> None:
    """Diffusion-QL's EMA after gradient step number `step` (1-based). As released, the update runs
    after the steps whose 0-based index k = step - 1 is a multiple of `ema_every` and at least
    `ema_start`; before that the EMA keeps its initial weights, or follows the network with
    `ema_copy_before_start`."""
    k = step - 1
    if k % cfg.ema_every:
        return
    with torch.no_grad():
        if k < cfg.ema_start:
            if cfg.ema_copy_before_start:
                torch._foreach_copy_(list(ema.parameters()), list(model.parameters()))
        else:
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - cfg.ema_decay)
