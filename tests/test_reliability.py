"""Reliability: a SIGKILLed stage resumes and ends bit-identical, crashed stages leave nothing
that looks finished, reruns are deterministic, NaNs stop a run without replacing the last good
checkpoint, and bad input fails in one line (naming the key or file and the fix) without
deleting anything computed earlier."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch

from diffrl import config
from diffrl.algos.bc import BCConfig, DiffusionBC
from diffrl.config import ConfigError
from diffrl.buffer import ReplayBuffer
from diffrl.data import toy_dataset, write_minari
from diffrl.runlog import NumericalError
from diffrl.train import train_offline
from diffrl.utils import seed_everything

from conftest import ENV1, ROOT, run




def error_lines(out):
    """The lines a user sees on stderr, without MuJoCo's and the progress bar's noise."""
    return [l for l in out.stderr.splitlines() if l.strip() and "settotalmass" not in l and "%|" not in l]


# --------------------------------------------------------------------------- preemption and resume
# a random-quality dataset (no SAC agent) and a small IQL critic: 1000 steps take a few seconds
CONFIG = ["budget=smoke", "seeds=[0]", "tasks={halfcheetah-random: {}}",
          "budgets={smoke: {dataset_episodes: 2, iql_steps: 1000}}", "iql={hidden: 64, policy_hidden: 64}"]
TARGET = "runs/halfcheetah-random/iql/seed0"
RESUME = "runs/.resume/halfcheetah-random/iql/seed0.pt"


@pytest.mark.pipeline
def test_sigkilled_stage_and_scheduler_resume_with_the_same_command(project):
    smk = ["snakemake", "--cores", "1", "--config", *CONFIG, "--"]
    run([*smk, "data/halfcheetah-random/dataset"], project)
    env = {**ENV1, "DIFFRL_CHECKPOINT_EVERY": "100"}

    # 1. start the stage through snakemake; after its first checkpoint SIGKILL the stage and the
    #    scheduler, as a preempted node does (Snakemake's lock is left behind)
    sm = subprocess.Popen([*smk, TARGET], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    try:
        deadline = time.time() + 120
        while not (project / RESUME).exists():
            assert sm.poll() is None, "snakemake ended before the first checkpoint:\n" + sm.stdout.read()[-3000:]
            assert time.time() < deadline, "no resume checkpoint appeared"
            time.sleep(0.02)
        stage = [p for p in psutil.Process(sm.pid).children(recursive=True)
                 if "stages/train.py" in " ".join(p.cmdline())]
        assert len(stage) == 1, stage
        sm.send_signal(signal.SIGKILL)
        stage[0].send_signal(signal.SIGKILL)
        log = sm.communicate(timeout=120)[0]
    finally:
        if sm.poll() is None:
            sm.kill()
    assert sm.returncode == -signal.SIGKILL, log[-2000:]
    assert list((project / ".snakemake/locks").glob("*.lock")), "the killed scheduler left no lock"
    killed_at = torch.load(project / RESUME, weights_only=False)["progress"]["step"]
    assert 100 <= killed_at < 1000 and killed_at % 100 == 0

    # 2. nothing looks finished: no output folder, Snakemake schedules the job again; the first
    #    Snakemake after the kill removes the stale lock (its owner is gone: diffrl/scheduler.py),
    #    so no `snakemake --unlock` is needed
    assert not (project / TARGET).exists()
    dry = run(["snakemake", "-n", "--config", *CONFIG, "--", TARGET], project)
    assert "offline_train" in dry.stdout and "Nothing to be done" not in dry.stdout + dry.stderr
    assert "removed the lock of a killed Snakemake run" in dry.stderr
    assert not list((project / ".snakemake/locks").glob("*.lock"))

    # 3. the rerun resumes from the checkpoint, finishes, and removes it
    run([*smk, TARGET], project, env=env)
    stage_log = (project / "logs/offline_train/halfcheetah-random/iql/seed0.log").read_text()
    assert f"resumed from {RESUME} at step {killed_at}" in stage_log
    assert not (project / RESUME).exists()
    assert not list((project / "runs/halfcheetah-random/iql").glob(".seed0.tmp*")), "a killed run's temporary was left"
    # that it ends bit-identical to an uninterrupted run: tests/test_resume.py (in process) and
    # tests/test_chaos.py (ten kills through Snakemake)


@pytest.mark.parametrize("damage", ["other settings", "truncated", "not a checkpoint", "other code version"])
def test_a_resume_checkpoint_that_cannot_be_trusted_is_not_used(tmp_path, one_thread, capsys, monkeypatch, damage):
    """A resume checkpoint written with other settings, truncated, replaced by other bytes, or
    written by another version of the code: the run warns in one line naming the file, starts from
    step 0 and ends equal to a fresh run (never resumes from it, never crashes)."""
    from diffrl import train as train_mod
    resume = tmp_path / "resume.pt"
    buf = ReplayBuffer.from_arrays(toy_dataset("8gaussians", 200, 0))

    def train(lr, steps):
        torch.manual_seed(0)
        agent = DiffusionBC(1, 2, BCConfig(hidden=16, layers=2, ema_start=0, lr=lr))
        train_offline(agent, buf, steps=steps, batch_size=32, seed=0, run_dir=None, env_name=None, eval_every=10,
                      curve_episodes=1, resume_path=resume, checkpoint_every=10)
        return agent

    class Stop(Exception):
        pass

    torch.manual_seed(0)
    agent = DiffusionBC(1, 2, BCConfig(hidden=16, layers=2, ema_start=0, lr=1e-3))
    update = agent.update

    def dies_at_16(batch, generator=None):
        if int(agent.step) == 15:
            raise Stop()
        return update(batch, generator)
    agent.update = dies_at_16
    with pytest.raises(Stop):
        train_offline(agent, buf, steps=30, batch_size=32, seed=0, run_dir=None, env_name=None, eval_every=10,
                      curve_episodes=1, resume_path=resume, checkpoint_every=10)
    assert torch.load(resume, weights_only=False)["progress"]["step"] == 10
    lr = 3e-4 if damage == "other settings" else 1e-3
    if damage == "truncated":
        resume.write_bytes(resume.read_bytes()[:300])
    elif damage == "not a checkpoint":
        resume.write_bytes(b"\x00garbage" * 50)
    elif damage == "other code version":
        monkeypatch.setattr(train_mod, "code_version", lambda: "0123456789abcdef")
    capsys.readouterr()
    resumed = train(lr, 30)
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and str(resume) in warnings[0] and "starting from step 0" in warnings[0], warnings
    resume.unlink(missing_ok=True)
    fresh = train(lr, 30)
    assert all(torch.equal(x, y) for x, y in zip(resumed.state_dict().values(), fresh.state_dict().values()))


# --------------------------------------------------------------------------- determinism
def test_deterministic_flag_requests_deterministic_kernels(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


# --------------------------------------------------------------------------- numerical faults
@pytest.mark.parametrize("fault", ["loss", "weights"])
def test_nan_stops_with_step_and_quantity_and_keeps_last_good_checkpoint(tmp_path, one_thread, fault):
    torch.manual_seed(0)
    agent = DiffusionBC(1, 2, BCConfig(hidden=16, layers=2, ema_start=0))
    update = agent.update

    def faulty(batch, generator=None):
        metrics = update(batch, generator)
        if int(agent.step) == 12:
            if fault == "loss":
                metrics = {**metrics, "bc_loss": torch.tensor(float("nan"))}
            else:  # a NaN gradient step: the weights go non-finite, the reported loss does not
                with torch.no_grad():
                    next(agent.eps.parameters()).fill_(float("nan"))
        return metrics
    agent.update = faulty
    buf = ReplayBuffer.from_arrays(toy_dataset("8gaussians", 200, 0))
    resume = tmp_path / "resume.pt"
    # the log is checked every 10 steps, checkpoints are written every 5: the step-15 checkpoint
    # comes before the next log flush and must not be written
    with pytest.raises(NumericalError) as err:
        train_offline(agent, buf, steps=200, batch_size=32, seed=0, run_dir=None, env_name=None, eval_every=1000,
                      curve_episodes=1, resume_path=resume, checkpoint_every=5)
    msg = str(err.value)
    if fault == "loss":
        assert msg.startswith("non-finite bc_loss (nan) at step 12:"), msg
    else:
        assert "non-finite" in msg and "at step 1" in msg, msg  # weights (or the loss they give) by step 15
    assert "last good checkpoint is kept" in msg
    ck = torch.load(resume, weights_only=False)
    assert ck["progress"]["step"] == 10
    assert all(torch.isfinite(v).all() for v in ck["agent"].values() if v.is_floating_point())


# --------------------------------------------------------------------------- bad input
def _episodes(obs_dim, act_dim, n=2, T=20):
    rng = np.random.default_rng(0)
    return [{"observations": rng.standard_normal((T + 1, obs_dim)), "actions": rng.uniform(-1, 1, (T, act_dim)),
             "rewards": rng.standard_normal(T), "terminations": np.zeros(T, bool),
             "truncations": np.r_[np.zeros(T - 1, bool), True]} for _ in range(n)]


JOB = ["--task", "halfcheetah-medium", "--seed", "0"]  # the offline_train job the bad-input tests run


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.pipeline
def test_bad_input_fails_in_one_line_and_keeps_finished_outputs(project):
    train = [sys.executable, "stages/train.py"]
    iql = [*train, "offline_train", "--algo", "iql", *JOB, "--set", "budget=smoke"]
    # a finished run from earlier: no failure below may touch it
    done = project / "runs/halfcheetah-medium/iql/seed0"
    done.mkdir(parents=True)
    (done / "model.pt").write_bytes(b"earlier result")
    (done / "train.json").write_text("{}")
    before = _snapshot(project / "runs")
    ds = project / "data/halfcheetah-medium/dataset"

    def fails(cmd, *expected):
        out = run(cmd, project, check=False)
        lines = error_lines(out)
        assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
        for text in expected:
            assert text in lines[0], lines[0]
        assert _snapshot(project / "runs") == before
        return lines[0]

    # dataset missing, then corrupted (truncated), then of another environment (dims)
    fails(iql, "dataset data/halfcheetah-medium/dataset is missing", "snakemake data/halfcheetah-medium/dataset")
    write_minari(ds, "local/halfcheetah/test-v0", _episodes(17, 6), "halfcheetah", "random", "test")
    h5 = ds / "data" / "main_data.hdf5"
    good = h5.read_bytes()
    h5.write_bytes(good[:300])
    fails(iql, "main_data.hdf5 is corrupted or truncated", "delete data/halfcheetah-medium/dataset and rerun")
    shutil.rmtree(ds)
    write_minari(ds, "local/halfcheetah/test-v0", _episodes(11, 3), "halfcheetah", "random", "test")
    fails(iql, "observation/action dims 11/3", "17/6", "another environment")
    shutil.rmtree(ds)
    write_minari(ds, "local/halfcheetah/test-v0", _episodes(17, 6), "halfcheetah", "random", "test")

    # a missing checkpoint of the pretraining a row starts from
    fails([*train, "offline_train", "--algo", "dtql", *JOB, "--set", "budget=smoke"],
          "runs/halfcheetah-medium/dtql_critic/seed0/model.pt is missing",
          "snakemake runs/halfcheetah-medium/dtql_critic/seed0")

    # params: unknown variant, misspelt key, out of range, non-numeric (before any work: no log written)
    logs_before = _snapshot(project / "logs")
    fails([*train, "offline_train", "--algo", "dql", *JOB, "--set", "dql.variant=qll"],
          "dql.variant='qll' is not one of")
    fails([*iql, "--set", "iql.expectle=0.8"], "unknown key 'iql.expectle'", "did you mean 'iql.expectile'")
    fails([*iql, "--set", "iql.temperature=-1"], "iql.temperature=-1.0 is out of range: it must be > 0")
    fails([*iql, "--set", "tfg_lambda=abc"], "tfg_lambda='abc' is not a number")
    assert _snapshot(project / "logs") == logs_before

    # an unknown algorithm is refused by the command line itself
    out = run([*train, "offline_train", "--algo", "dqll", *JOB], project, check=False)
    assert out.returncode == 2 and error_lines(out) == [l for l in error_lines(out) if "invalid choice: 'dqll'" in l] \
        and len(error_lines(out)) == 1, out.stderr
    assert _snapshot(project / "runs") == before


# --------------------------------------------------------------------------- outputs that cannot be written
def _file_size_limit(limit: int):
    """A process whose files cannot grow past `limit` bytes: its writes fail as on a full disk."""
    import resource

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of the default kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_files


def test_a_stage_that_cannot_write_its_output_fails_in_one_line_and_leaves_nothing_finished(project):
    """Disk full (here a 100 kB file size limit, which needs no privileges; a full disk, a quota or a
    read-only folder fail the same way): one line naming what could not be written, exit 2, no
    output folder, no temporary, and an earlier good output of another run untouched. The first
    large write is the run's checkpoint (a job opens no DVC state)."""
    ds = project / "data/halfcheetah-medium/dataset"
    write_minari(ds, "local/halfcheetah/test-v0", _episodes(17, 6), "halfcheetah", "random", "test")
    earlier = project / "runs/halfcheetah-medium/bc/seed0"
    earlier.mkdir(parents=True)
    (earlier / "model.pt").write_bytes(b"earlier result")
    cmd = [sys.executable, "stages/train.py", "offline_train", "--algo", "iql", *JOB,
           "--set", "budget=smoke", "--set", "iql={hidden: 64, policy_hidden: 64}"]
    out = subprocess.run(cmd, cwd=project, env=ENV1, capture_output=True, text=True, timeout=300,
                         preexec_fn=_file_size_limit(100_000))
    lines = error_lines(out)
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: cannot write runs/") and "free space there" in lines[0], lines[0]
    assert "File too large" in lines[0], lines[0]
    assert not (project / "runs/halfcheetah-medium/iql/seed0").exists()
    assert not [p for p in (project / "runs").rglob(".*tmp*")], "a temporary was left"
    assert (earlier / "model.pt").read_bytes() == b"earlier result"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES])
def test_a_failed_write_names_the_output_and_keeps_the_previous_one(tmp_path, err):
    """diffrl.utils.atomic_path: a write failing for lack of space or permission inside the block
    becomes OutputWriteError naming the output (a folder's, not its temporary's), the temporary is
    removed and the previous output stays."""
    from diffrl.utils import OutputWriteError, atomic_path, save_checkpoint
    out = tmp_path / "runs/iql/seed0"
    out.mkdir(parents=True)
    (out / "model.pt").write_text("previous")
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        raise OSError(err, os.strerror(err), f.name)
    with pytest.raises(OutputWriteError) as e:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            torch.save = failing_save
            try:
                save_checkpoint(tmp / "model.pt", {"x": 1})
            finally:
                torch.save = real_save
    assert str(e.value).startswith(f"cannot write {out}: {os.strerror(err)}") and "\n" not in str(e.value)
    assert (out / "model.pt").read_text() == "previous"
    assert [p.name for p in out.parent.iterdir()] == ["seed0"]
    with pytest.raises(OSError) as e:  # another OSError (not about writing the output) passes unchanged
        with atomic_path(out) as tmp:
            raise OSError(errno.ECONNRESET, "reset")
    assert type(e.value) is ConnectionResetError


# --------------------------------------------------------------------------- a damaged dataset
def test_a_damaged_dataset_is_set_aside_and_rebuilt_with_one_warning(project):
    """A half-written or damaged dataset (truncated file, no info.json, a file missing) is found
    before the next Snakemake run: one warning names the file, the folder is moved aside (nothing
    deleted) and the run rebuilds it; an intact dataset is left alone."""
    smk = ["snakemake", "--cores", "1", "--config", *CONFIG, "--"]
    run([*smk, "data/halfcheetah-random/dataset"], project)
    ds = project / "data/halfcheetah-random/dataset"
    h5 = ds / "data/main_data.hdf5"
    good = h5.read_bytes()
    assert json.loads((ds / "info.json").read_text())["files"]["data/main_data.hdf5"] == len(good)
    dry = run(["snakemake", "-n", "--config", *CONFIG, "--", "data/halfcheetah-random/dataset"], project)
    assert "warning" not in dry.stderr and "Nothing to be done" in dry.stdout + dry.stderr
    damages = {"truncated": (lambda: h5.write_bytes(good[: len(good) // 2]), "main_data.hdf5 has"),
               "info.json missing": (lambda: (ds / "info.json").unlink(), "info.json is missing"),
               "file missing": (lambda: (ds / "data/metadata.json").unlink(), "metadata.json is missing")}
    for n, (damage, named) in enumerate(damages.values(), 1):
        damage()
        out = run([*smk, "data/halfcheetah-random/dataset"], project)
        warnings = [l for l in error_lines(out) if l.startswith("warning")]
        assert len(warnings) == 1, warnings
        assert "warning: dataset data/halfcheetah-random/dataset is damaged" in warnings[0], warnings
        assert named in warnings[0], warnings[0]
        aside = list((project / "data/halfcheetah-random").glob("dataset.damaged-*"))
        assert len(aside) == n and sum(f"{a.name} and" in warnings[0] for a in aside) == 1, warnings[0]
        assert h5.read_bytes() == good  # rebuilt, the same bytes (seeded)


@pytest.mark.parametrize("overrides, message", [
    (["iql.temperature=-1"], "iql.temperature=-1.0 is out of range: it must be > 0"),
    (["sac.init_temperature=0"], "sac.init_temperature=0.0 is out of range: it must be > 0"),
    (["eda.alpha=-0.5"], "eda.alpha=-0.5 is out of range: it must be >= 0"),
    (["iql.expectile=1"], "iql.expectile=1.0 is out of range: it must be < 1"),
    (["dtql_critic.expectile=-0.1"], "dtql_critic.expectile=-0.1 is out of range"),
    (["dpmd.num_particles=0"], "dpmd.num_particles=0 is out of range"),
    (["tfg_lambda=abc"], "tfg_lambda='abc' is not a number"),
    (["dql.variant=qll"], "dql.variant='qll' is not one of"),
    (["algorithms=[bc, dqll]"], "did you mean 'dql'"),
])
def test_out_of_range_and_non_numeric_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        config.load(ROOT / "params.yaml", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_summary_fails_when_a_declared_run_is_missing(project):
    results = project / "results"
    (results / "halfcheetah-medium_summary.csv").write_text("earlier table\n")
    for algo, seed in (("bc", 0), ("bc", 1), ("iql", 0)):
        path = project / f"runs/halfcheetah-medium/eval/{algo}/seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    out = run([sys.executable, "stages/summary.py", "--scope", "halfcheetah-medium", "--set", "seeds=[0, 1]",
               "--set", "algorithms=[bc, iql]", "--set", "stats.baseline=bc"], project, check=False)
    lines = error_lines(out)
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "1 declared run(s) have no evaluation" in lines[0], lines[0]
    assert "runs/halfcheetah-medium/eval/iql/seed1.json" in lines[0], lines[0]
    assert (results / "halfcheetah-medium_summary.csv").read_text() == "earlier table\n"


# --------------------------------------------------------------------------- a killed scheduler's lock
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


CASES = ["owner gone", "owner alive", "one of two alive", "registered after the lock", "other host", "no registration"]


@pytest.mark.parametrize("case", CASES)
def test_only_a_lock_whose_owner_is_gone_is_removed(tmp_path, monkeypatch, case):
    """diffrl.scheduler.clear_stale_lock removes Snakemake's lock only when every run registered
    before the lock was taken (each registers before it can lock) ran on this host and is gone."""
    import socket

    from diffrl import scheduler
    monkeypatch.chdir(tmp_path)
    locks, runs = tmp_path / scheduler.LOCKS, tmp_path / scheduler.RUNS
    locks.mkdir(parents=True)
    runs.mkdir(parents=True)
    taken = time.time() - 60
    for name in ("0.input.lock", "0.output.lock"):
        (locks / name).write_text("x")
        os.utime(locks / name, (taken, taken))

    def register(pid, host=socket.gethostname(), at=taken - 5):
        started = psutil.Process(pid).create_time() if psutil.pid_exists(pid) else 0.0
        (runs / f"{host}-{pid}.json").write_text(json.dumps({"host": host, "pid": pid, "started": started,
                                                             "time": at}))
    if case in ("owner gone", "one of two alive"):
        register(_dead_pid())
    if case in ("owner alive", "one of two alive"):
        register(os.getppid())
    if case == "registered after the lock":
        register(_dead_pid(), at=taken + 30)
    if case == "other host":
        register(_dead_pid(), host="elsewhere")
    removed = scheduler.clear_stale_lock()
    assert removed == (case == "owner gone")
    assert bool(list(locks.glob("*.lock"))) == (case != "owner gone")
    if case == "owner gone":  # the dead run's registration goes with its lock
        assert not list(runs.glob("*.json"))


def _ended(proc: psutil.Process, within: float) -> bool:
    t = time.time()
    while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and time.time() - t < within:
        time.sleep(0.05)
    return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("when", ["while the job runs", "before the job looks"])
def test_a_job_stops_when_its_scheduler_is_killed(tmp_path, when):
    """diffrl.scheduler.stop_with_scheduler: a job whose scheduler (here a program named snakemake,
    which registers itself as Snakemake does) is SIGKILLed ends within a second, as a kill of the
    whole group would end it; also when the scheduler died while the job was still starting."""
    delay = 1.5 if when == "before the job looks" else 0
    job = (f"import time; time.sleep({delay}); from diffrl.scheduler import stop_with_scheduler, _scheduler_chain; "
           "print(len(_scheduler_chain()[0]), flush=True); stop_with_scheduler(); time.sleep(30)")
    scheduler = ("import os, subprocess, sys; from diffrl.scheduler import SCHEDULER_ENV, _started; import socket; "
                 "os.environ[SCHEDULER_ENV] = f'{socket.gethostname()}:{os.getpid()}:{_started(os.getpid())}'; "
                 "p = subprocess.Popen([sys.executable, '-c', sys.argv[2]]); print(p.pid, flush=True); p.wait()")
    (tmp_path / "snakemake").write_text(scheduler)
    sched = subprocess.Popen([sys.executable, str(tmp_path / "snakemake"), "--cores", job], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(sched.stdout.readline()))
        if when == "while the job runs":
            assert sched.stdout.readline().strip() == "1"  # the chain up to the scheduler: the scheduler itself
            time.sleep(0.5)
            assert child.is_running()
        sched.kill()
        sched.wait()
        assert _ended(child, 1.5 + delay), "the job outlived its scheduler"
    finally:
        sched.kill()


def test_a_job_without_a_scheduler_is_not_watched_and_one_whose_dvc_is_gone_stops():
    job = "from diffrl.scheduler import stop_with_scheduler, _scheduler_chain; print(_scheduler_chain()); " \
          "stop_with_scheduler(); print('ran on', flush=True)"
    alone = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True, timeout=60)
    assert alone.stdout.split("\n")[:2] == ["([], None)", "ran on"], alone.stdout + alone.stderr
    env = {k: v for k, v in os.environ.items() if k != "DIFFRL_SCHEDULER"}
    orphan = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True, timeout=60,
                            env={**env, "DVC_STAGE": "offline_train_iql@halfcheetah-medium-0"})
    assert orphan.returncode == -signal.SIGKILL and "ran on" not in orphan.stdout, orphan.stdout + orphan.stderr
    assert "DVC (stage offline_train_iql@halfcheetah-medium-0), which started this job, is gone" in orphan.stderr
