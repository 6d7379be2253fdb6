"""Per-run logging: a progress bar, a plain log line every interval, metrics files, steps/s."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm


class NumericalError(RuntimeError):
    """A NaN or Inf in a loss, gradient or value; the message names the step and the quantity."""


class MetricsDir:
    """A run's scalar metrics in dvclive's folder layout, which `dvc plots show` and `dvc metrics show`
    read: `plots/metrics/NAME.tsv` (a `step<TAB>leaf` header, then one line per logged step) and
    `metrics.json` (the latest value of each metric, nested at its slashes, and the step). Written
    here in a few lines: importing dvclive and letting it open the DVC project cost a job about a
    second before its first step."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        shutil.rmtree(self.folder, ignore_errors=True)  # a fresh run starts fresh files, as dvclive does
        self.latest: dict[str, float] = {}
        self.step = 0

    def log(self, step: int, name: str, value: float) -> None:
        tsv = self.folder / "plots" / "metrics" / f"{name}.tsv"
        if not tsv.exists():
            tsv.parent.mkdir(parents=True, exist_ok=True)
            tsv.write_text(f"step\t{name.rsplit('/', 1)[-1]}\n")
        with open(tsv, "a") as f:
            f.write(f"{step}\t{float(value)}\n")
        self.latest[name], self.step = float(value), step

    def write_summary(self) -> None:
        nested: dict = {}
        for name, value in self.latest.items():
            *parents, leaf = name.split("/")
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "metrics.json").write_text(json.dumps({**nested, "step": self.step}, indent=4))


class RunLog:
    """Logs scalar metrics of one training run.

    Metrics arrive as tensors and are only moved to the host every `every` steps, so logging
    costs no host sync per step. Non-finite values stop the run with a message naming the
    quantity and the step.
    """

    def __init__(self, run_dir: Path | None, total: int, desc: str, every: int = 100):
        self.every, self.total, self.t0 = max(1, every), total, time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, mininterval=5.0, file=sys.stderr, dynamic_ncols=True,
                        disable=None)
        self.metrics = MetricsDir(Path(run_dir) / "dvclive") if run_dir is not None else None
        self._acc: dict[str, list] = {}
        self._steps: dict[str, list] = {}  # the step of each accumulated value

    def log(self, step: int, metrics: dict) -> None:
        import torch  # here, not at the top: the stages that log nothing (summary, plots) never import torch
        for k, v in metrics.items():
            self._acc.setdefault(k, []).append(v.detach() if isinstance(v, torch.Tensor) else torch.tensor(v))
            self._steps.setdefault(k, []).append(step)
        self.bar.update(1)
        if step % self.every == 0 or step == self.total:
            self.flush(step)

    def check(self, step: int) -> None:
        """Raise NumericalError if any value logged since the last flush is NaN or Inf.

        The message names the quantity and the exact step at which it first went non-finite
        (one host sync; the training loop calls it before writing a resume checkpoint)."""
        import torch
        for k, vs in self._acc.items():
            values = torch.stack([x.float().reshape(()) if x.numel() == 1 else x.float().mean() for x in vs])
            bad = ~torch.isfinite(values)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise NumericalError(f"non-finite {k} ({float(values[i])}) at step {self._steps[k][i]}: lower "
                                     f"the learning rate or check the data; the last good checkpoint is kept")

    def flush(self, step: int) -> dict:
        import torch
        out = {}
        for k, vs in self._acc.items():
            v = float(torch.stack([x.float() for x in vs]).mean())
            if not math.isfinite(v):
                self.check(step)  # names the exact step
                raise NumericalError(f"non-finite {k} ({v}) around step {step}: lower the learning rate or "
                                     f"check the data; the last good checkpoint is kept")
            out[k] = v
        self._acc.clear()
        self._steps.clear()
        out["steps_per_s"] = step / max(time.perf_counter() - self.t0, 1e-9)
        if self.metrics is not None:
            for k, v in out.items():
                self.metrics.log(step, f"train/{k}", v)
            self.metrics.write_summary()
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in list(out.items())[:4]})
        return out

    def log_eval(self, step: int, score: float, ret: float) -> None:
        print(f"[eval] step {step}: return {ret:.1f}, normalised score {score:.2f}", file=sys.stderr, flush=True)
        if self.metrics is not None:
            self.metrics.log(step, "eval/score", score)
            self.metrics.log(step, "eval/return", ret)
            self.metrics.write_summary()

    def close(self) -> float:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.write_summary()
        return time.perf_counter() - self.t0
