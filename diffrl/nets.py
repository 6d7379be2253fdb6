"""Networks shared by every algorithm: MLPs, fused critic ensembles, diffusion noise nets, policies."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

class _FastMishFn(torch.autograd.Function):
    """Mish x tanh(softplus(x)) through one sigmoid s: tanh(softplus(x)) = p / (2 - p) with
    p = s (2 - s), and d/dx = t + x (1 - t^2) s. Same values as nn.Mish, several times faster on
    CPU than aten::mish. First derivatives only: a double backward fails loudly."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        p = s * (2 - s)
        t = p / (2 - p)
        ctx.save_for_backward(x, s, t)
        return x * t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, s, t = ctx.saved_tensors
        return g * (t + x * (1 - t * t) * s)


class Mish(nn.Module):
    """nn.Mish on CUDA (fused kernel); the one-sigmoid form on CPU."""

    def forward(self, x):
        return F.mish(x) if x.is_cuda else _FastMishFn.apply(x)


ACTIVATIONS = {"mish": Mish, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}  # gelu: exact


class MLP(nn.Sequential):
    """A plain MLP (built by `mlp`): Linear, optional LayerNorm and activation, repeated; a unit that
    `compile_networks` compiles."""


def mlp(in_dim: int, out_dim: int, hidden: int = 256, layers: int = 3, act: str = "mish",
        layer_norm: bool = False) -> MLP:
    mods, d = [], in_dim
    for _ in range(layers):
        mods.append(nn.Linear(d, hidden))
        if layer_norm:
            mods.append(nn.LayerNorm(hidden))
        mods.append(ACTIVATIONS[act]())
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return MLP(*mods)


class EnsembleLinear(nn.Module):
    """E independent linear layers evaluated as one batched matmul (twin critics in one call)."""

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        bound = 1 / math.sqrt(in_dim)  # same init as nn.Linear
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (n, B, in) or (B, in)
        if x.dim() == 2:
            return torch.baddbmm(self.bias, x.unsqueeze(0).expand(self.weight.shape[0], -1, -1), self.weight)
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """n MLPs with identical shapes, fused: input (B, in) -> output (n, B, out)."""

    def __init__(self, n: int, in_dim: int, out_dim: int, hidden: int = 256, layers: int = 3,
                 act: str = "mish", layer_norm: bool = False):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers)) if layer_norm else None
        self.act = ACTIVATIONS[act]()
        self.out = EnsembleLinear(n, dims[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.act(x)
        return self.out(x)


class Critic(nn.Module):
    """n Q heads Q_i(s, a) fused in one ensemble; returns (n, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, act: str = "mish",
                 layer_norm: bool = False, n: int = 2):
        super().__init__()
        self.net = EnsembleMLP(n, obs_dim + act_dim, 1, hidden, layers, act, layer_norm)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)

    def q_min(self, obs, action):
        return self(obs, action).min(0).values


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, hidden: int = 256, layers: int = 3, act: str = "mish", layer_norm=False):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, layers, act, layer_norm)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000) * torch.arange(half) / (half - 1)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float().unsqueeze(-1) * self.freqs
        return torch.cat([x.sin(), x.cos()], -1)


class ScaledSinusoidalEmbedding(nn.Module):
    """The SDAC/DPMD reference's time embedding (pnielsen2/inference_mirror_descent@833e14c,
    relax/network/blocks.py:228-248, `scaled_sinusoidal_encoding`): frequencies theta^(-j/half) for
    j = 0 .. half-1, [sin, cos] of t times them, scaled by 1/sqrt(dim). SinusoidalEmbedding (Diffusion-QL's)
    divides by half - 1 instead, so its last frequency is exactly 1/theta, and does not scale. t is the
    integer level 0 .. T-1 in both (the reference's p_sample and randint levels). No parameters: the
    frequencies are a buffer named as the reference names them, so a state dict of the other embedding
    does not load into it."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the embedding's dim must be even (sin and cos halves), got {dim}")
        half = dim // 2
        # float32, as the reference's jnp.arange(half) / half and theta ** -freq_seq (blocks.py:235-236)
        self.register_buffer("inv_freq", theta ** -(torch.arange(half, dtype=torch.float32) / half))
        self.scale = dim ** -0.5

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float().unsqueeze(-1) * self.inv_freq
        return torch.cat([x.sin(), x.cos()], -1) * self.scale


class NoiseNet(nn.Module):
    """eps_theta(a_t, t, s): time embedding 16 -> Linear 32 -> Mish -> Linear 16, then
    concat(a_t, t_emb, s) -> layers x hidden Mish -> action dim (the Diffusion-QL policy net)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 3, t_dim: int = 16):
        super().__init__()
        self.time = nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, 2 * t_dim), Mish(),
                                  nn.Linear(2 * t_dim, t_dim))
        self.net = mlp(act_dim + t_dim + obs_dim, act_dim, hidden, layers, "mish")

    def forward(self, a_t: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a_t, self.time(t), obs], -1))


LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class TanhGaussianActor(nn.Module):
    """a = tanh(mu + sigma z), log std clipped to [log_std_min, log_std_max]; the log-prob carries
    the tanh correction (the exact squashed-Gaussian density) unless `tanh_correction` is off (the
    fork's SAC scores the pre-tanh sample). SAC and DTQL's one-step policy."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 2, act: str = "relu",
                 log_std_min: float = LOG_STD_MIN, log_std_max: float = LOG_STD_MAX, tanh_correction: bool = True):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden, layers, act)
        self.log_std_min, self.log_std_max, self.tanh_correction = log_std_min, log_std_max, tanh_correction

    def forward(self, obs, deterministic: bool = False, generator=None):
        mu, log_std = self.net(obs).chunk(2, -1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        if deterministic:
            return torch.tanh(mu), None
        std = log_std.exp()
        z = mu + std * torch.randn(mu.shape, generator=generator, device=mu.device)
        a = torch.tanh(z)
        logp = (-0.5 * ((z - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        if self.tanh_correction:  # log |d tanh(z) / dz| = 2 (log 2 - z - softplus(-2 z))
            logp = logp - (2 * (math.log(2) - z - F.softplus(-2 * z))).sum(-1)
        return a, logp


class GaussianActor(nn.Module):
    """tanh-mean Gaussian with state-independent log std (the IQL AWR policy)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 2, act: str = "relu"):
        super().__init__()
        self.mean = mlp(obs_dim, act_dim, hidden, layers, act)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def log_prob(self, obs, action):
        mu = torch.tanh(self.mean(obs))
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        return (-0.5 * ((action - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def forward(self, obs):
        return torch.tanh(self.mean(obs))


def compile_networks(model: nn.Module, mode: str) -> int:
    """torch.compile, in place, every MLP, fused critic ensemble and network that sets `compile_unit`
    (EDA's energy nets) inside `model` (state_dict keys unchanged, so checkpoints load either way);
    returns how many. `mode` is params.yaml's `compile`: none (eager), or a torch.compile mode
    (reduce-overhead: CUDA graphs on a GPU). Each network is compiled once per input shape on its
    first call. Compiled kernels round differently from eager ones, and reruns with the same mode are
    still bit-identical on CPU. An EDA energy net returns its action gradient from the same call
    (torch.func.grad inside the compiled graph), so the double backward of its training is compiled
    and fused too. (A marker attribute, not an import of the EDA module: every stage imports this
    file, and a change to EDA's code must rerun EDA's jobs only.)"""
    if mode == "none":
        return 0
    import torch._dynamo
    import torch._inductor.config
    # compiled kernels as deterministic as eager ones (diffrl.utils.seed_everything sets only the latter)
    torch._inductor.config.deterministic = torch.are_deterministic_algorithms_enabled()
    # one entry per (network, input shape, grad mode): actors, their EMA copies, critics and targets
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    nets = [m for m in model.modules() if isinstance(m, (MLP, EnsembleMLP)) or getattr(m, "compile_unit", False)]
    for m in nets:
        m.compile(mode=mode, dynamic=False)
    return len(nets)


def orthogonal_init_(module: nn.Module) -> nn.Module:
    """Orthogonal weights (gain 1) and zero biases in every nn.Linear of `module`: the init of
    DTQL's one-step policy (agents/model.py, weight_init). Returns `module`."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class Adam:
    """torch.optim.Adam's update bit for bit, without torch.optim's machinery: the first torch.optim
    optimiser a process builds or steps imports TorchDynamo (its methods are wrapped to keep the
    compiler out), about 1.3 s on a CPU core, as much as importing torch, paid by every pipeline job.

    The update is torch's single-tensor form (its CPU default), or with `fused` its fused kernel
    (torch._fused_adam_, one call for every parameter): step += 1, m <- lerp(m, g, 1 - b1),
    v <- b2 v + (1 - b2) g^2, p <- p - lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps),
    no weight decay, parameters without a gradient skipped. `param_groups` (one group: set its "lr"
    to schedule the rate), `state`, `zero_grad`, `state_dict` and `load_state_dict` are torch's,
    state dicts included: a checkpoint written by either loads into the other."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 fused: bool = False):
        self.param_groups = [{"params": list(params), "lr": lr, "betas": betas, "eps": eps, "weight_decay": 0,
                              "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                              "differentiable": False, "fused": fused, "decoupled_weight_decay": False}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        if p not in self.state:  # as torch initialises it: the step a float32 scalar, on the device if fused
            step = torch.zeros((), dtype=torch.float32, device=p.device if self.param_groups[0]["fused"] else None)
            self.state[p] = {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return self.state[p]

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        params = [p for p in group["params"] if p.grad is not None]
        states = [self._state(p) for p in params]
        if group["fused"]:
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                               [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=lr, beta1=beta1,
                               beta2=beta2, weight_decay=0, eps=eps, maximize=False)
            return
        for p, s in zip(params, states):
            s["step"] += 1
            s["exp_avg"].lerp_(p.grad, 1 - beta1)
            s["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            step = s["step"].item()
            step_size = lr / (1 - beta1 ** step)
            denom = (s["exp_avg_sq"].sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
            p.addcdiv_(s["exp_avg"], denom, value=-step_size)

    def state_dict(self) -> dict:
        """torch's layout: parameters by their index, the group's settings with those indices."""
        group = self.param_groups[0]
        index = {id(p): i for i, p in enumerate(group["params"])}
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                                  "params": list(range(len(group["params"])))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        (saved,) = state_dict["param_groups"]
        group = self.param_groups[0]
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(f"optimizer state of {len(saved['params'])} parameters, this optimizer has "
                             f"{len(group['params'])}")
        group.update({k: v for k, v in saved.items() if k not in ("params", "fused")})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = group["params"][saved["params"].index(int(i))]
            # as torch loads it: the moments as the parameter's dtype and device, the step kept as saved
            # (moved to the parameter's device for the fused kernel)
            step = s["step"].to(p.device, copy=True) if group["fused"] else s["step"].clone()
            self.state[p] = {"step": step, "exp_avg": s["exp_avg"].to(p.device, p.dtype, copy=True),
                             "exp_avg_sq": s["exp_avg_sq"].to(p.device, p.dtype, copy=True)}


def adam(params, lr: float, fused_on_cpu: bool = False) -> Adam:
    """Adam, fused (one kernel for every parameter's update) when the parameters live on CUDA, where
    one launch per tensor would dominate a small network's step. On CPU the plain form unless
    `fused_on_cpu` (Diffusion-QL's, as it has always run): the two round differently."""
    params = list(params)
    return Adam(params, lr=lr, fused=fused_on_cpu or any(p.is_cuda for p in params))


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
