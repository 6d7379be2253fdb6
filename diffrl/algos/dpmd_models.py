"""World models of DPMD's model-based tilt and planning (docs/algorithms.md, "SDAC and DPMD (online)":
"Model-based tilt" and "Planning"), learned online from the replay buffer.

Both models predict, for a transition (s, a): the next state s', the (unscaled) reward r and the
probability that s' is terminal. Targets are (s' - s, r), normalised by running statistics.

- `MLPEnsembleDynamics` ("mlp_ensemble"): a fused ensemble of deterministic MLPs (one batched
  matmul per layer, `diffrl.nets.EnsembleMLP`) regressing the normalised targets with MSE plus a
  termination logit with cross-entropy. Every member sees the same minibatch (members differ by
  initialisation only); the prediction is the ensemble mean, so it is deterministic.
- `DiffusionDynamics` ("diffusion"): the Diffusion-QL noise net (`diffrl.nets.NoiseNet`) with the
  "state" input set to (s, a) and the "action" output set to the normalised (s' - s, r), trained
  with the usual eps-prediction loss and sampled with the shared DDPM sampler
  (`DiffusionSchedule.sample`, no x0 clipping since normalised targets are unbounded) plus a small
  MLP termination classifier. A prediction is one sample; gradients flow through the chain, so
  training-free guidance can differentiate the model-based tilt.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffrl.diffusion import DiffusionSchedule
from diffrl.nets import EnsembleMLP, NoiseNet, mlp


class RunningNorm(nn.Module):
    """Mean and variance of every vector seen so far (Chan's parallel update), as buffers."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        bm, bv = x.mean(0), x.var(0, unbiased=False)
        tot = self.count + n
        delta = bm - self.mean
        frac = (n / tot).float()
        m2 = self.var * (1 - frac) + bv * frac + delta.pow(2) * frac * (1 - frac)
        self.mean.add_(delta * frac)
        self.var.copy_(m2)
        self.count.copy_(tot)

    def norm(self, x):
        return (x - self.mean) / (self.var + self.eps).sqrt()

    def denorm(self, y):
        return y * (self.var + self.eps).sqrt() + self.mean


class _Dynamics(nn.Module):
    """Shared normalisation of inputs (s) and targets (s' - s, r)."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.obs_norm = RunningNorm(obs_dim)
        self.target_norm = RunningNorm(obs_dim + 1)

    def _cond(self, obs, act):
        return torch.cat([self.obs_norm.norm(obs), act], -1)

    def _targets(self, b: dict, update_stats: bool):
        y = torch.cat([b["next_obs"] - b["obs"], b["reward"].unsqueeze(-1)], -1)
        if update_stats:
            self.obs_norm.update(b["obs"])
            self.target_norm.update(y)
        return self.target_norm.norm(y)

    def _split(self, y_norm, obs):
        y = self.target_norm.denorm(y_norm)
        return obs + y[..., :-1], y[..., -1]


class MLPEnsembleDynamics(_Dynamics):
    def __init__(self, obs_dim: int, act_dim: int, n: int = 5, hidden: int = 200, layers: int = 3):
        super().__init__(obs_dim, act_dim)
        self.net = EnsembleMLP(n, obs_dim + act_dim, obs_dim + 2, hidden, layers, "silu")

    def loss(self, b: dict, generator=None) -> tuple[torch.Tensor, dict]:
        y = self._targets(b, update_stats=True)
        out = self.net(self._cond(b["obs"], b["action"]))  # (n, B, obs + 2)
        mse = (out[..., :-1] - y).pow(2).mean((1, 2)).sum()  # sum over members
        done = b["terminal"].expand(out.shape[0], -1)
        bce = F.binary_cross_entropy_with_logits(out[..., -1], done, reduction="none").mean(1).sum()
        return mse + bce, {"model_mse": mse.detach() / out.shape[0]}

    def predict(self, obs, act, generator=None):
        """(next_obs, reward, p_terminal): the ensemble mean (deterministic)."""
        out = self.net(self._cond(obs, act)).mean(0)
        s2, r = self._split(out[..., :-1], obs)
        return s2, r, torch.sigmoid(out[..., -1])


class DiffusionDynamics(_Dynamics):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 200, layers: int = 3, T: int = 10):
        super().__init__(obs_dim, act_dim)
        self.eps = NoiseNet(obs_dim + act_dim, obs_dim + 1, hidden, layers)
        self.done = mlp(obs_dim + act_dim, 1, hidden, 2, "silu")
        self.schedule = DiffusionSchedule.make("vp", T)

    def _apply(self, fn, *args, **kw):  # keep the schedule's tensors on the module's device
        out = super()._apply(fn, *args, **kw)
        dev = self.target_norm.mean.device
        if self.schedule.betas.device != dev:
            self.schedule = DiffusionSchedule.make("vp", self.schedule.T, dev)
        return out

    def loss(self, b: dict, generator=None) -> tuple[torch.Tensor, dict]:
        y = self._targets(b, update_stats=True)
        cond = self._cond(b["obs"], b["action"])
        dsm = self.schedule.loss(self.eps, y, cond, generator)
        bce = F.binary_cross_entropy_with_logits(self.done(cond).squeeze(-1), b["terminal"])
        return dsm + bce, {"model_dsm": dsm.detach()}

    def predict(self, obs, act, generator=None):
        """(next_obs, reward, p_terminal) from one sample of the conditional diffusion model."""
        cond = self._cond(obs, act)
        y = self.schedule.sample(self.eps, cond, self.obs_dim + 1, generator, 1.0, clip=None)
        s2, r = self._split(y, obs)
        return s2, r, torch.sigmoid(self.done(cond).squeeze(-1))


def make_dynamics(kind: str, obs_dim: int, act_dim: int, ensemble: int, hidden: int, layers: int,
                  T: int) -> _Dynamics:
    if kind == "mlp_ensemble":
        return MLPEnsembleDynamics(obs_dim, act_dim, ensemble, hidden, layers)
    if kind == "diffusion":
        return DiffusionDynamics(obs_dim, act_dim, hidden, layers, T)
    raise ValueError(f"unknown model_type {kind!r}: use mlp_ensemble or diffusion")
