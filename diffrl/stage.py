"""What every stage entry point shares: arguments, validated params, logging, errors.

A stage is `python stages/NAME.py --task T [--seed S] [--set key=value ...]`. It validates
params.yaml (plus overrides) before doing any work, sees only the keys it declared in
diffrl.pipeline (STAGES and budget_keys), tees its output to its log file, and turns known
failures (bad params or data, NaNs, an output it cannot write) into one line naming the key
or file and the fix (exit code 2), and stops when its scheduler is killed (diffrl/scheduler.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from diffrl import config
from diffrl.config import ConfigError, StageParams  # noqa: F401 (re-exported for stages)
from diffrl.data import DatasetError
from diffrl.pipeline import budget_keys, stage_keys, stage_of
from diffrl.runlog import NumericalError
from diffrl.scheduler import stop_with_scheduler
from diffrl.utils import OutputWriteError


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            try:
                st.write(s)
                st.flush()
            except OSError:  # the log file's disk is full: keep the terminal, lose only the log
                if st is not self.streams[0]:
                    self.streams = tuple(x for x in self.streams if x is not st)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()

    def isatty(self):
        return False

    def close(self):  # atexit handlers of other libraries may close their stream
        pass


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments get one line naming the fix (argparse's default also prints the usage)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see `python {self.prog} --help`)\n")


def parser(description: str) -> argparse.ArgumentParser:
    p = _OneLineParser(description=description, prog=f"stages/{Path(sys.argv[0]).name}")
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params.yaml value, as `dvc exp run -S` does (repeatable)")
    return p


def task_arg(name: str):
    """argparse type of --task: the task a name denotes (diffrl.tasks), or one line naming the fix."""
    from diffrl.tasks import parse
    try:
        return parse(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(stage: str, args: argparse.Namespace, log_path: str, main, **wildcards) -> None:
    """Validate params (a job of a task: with what the task changes), open the log, run
    `main(params, args)`; map known failures to one line."""
    stop_with_scheduler()  # a job whose scheduler was killed stops too (diffrl/scheduler.py)
    try:
        keys = stage_keys(stage, **wildcards)
        # only the algorithm sections this job reads are validated, so it imports only their modules
        # (the code dependencies diffrl.dag declares for it); the Snakefile validates them all
        validated = config.load(args.params, args.set, sections=keys, task=wildcards.get("task"))
        params = StageParams(stage, validated, keys, budget_keys(stage, **wildcards))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")
    except OSError as e:
        print(f"error: {OutputWriteError(Path(log_path), e.strerror or str(e))}", file=sys.stderr)
        sys.exit(2)
    with log:
        sys.stdout = _Tee(sys.__stdout__, log)
        sys.stderr = _Tee(sys.__stderr__, log)
        try:
            if stage_of(stage).torch:  # a job without torch (summary) skips its second-long import
                from diffrl.utils import set_threads
                set_threads(int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None)
            main(params, args)
        except (ConfigError, DatasetError, NumericalError, FileNotFoundError, OutputWriteError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
