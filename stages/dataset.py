"""Stages `data_agent` and `dataset`: the offline data of the tasks.

    python stages/dataset.py data_agent --env hopper            # data/hopper/agent
    python stages/dataset.py dataset --task hopper-medium-replay  # data/hopper-medium-replay/dataset

`data_agent` trains an environment's SAC data agent once (diffrl.generate.train_data_agent); every
generated dataset of that environment is drawn from it, so hopper-medium and hopper-medium-replay
share one SAC run. `dataset` writes one task's dataset as a Minari dataset: generated
(diffrl.generate.make_dataset; random needs no agent) or, for a task named by a Minari id, fetched.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import agent_dir, dataset_dir, log_file, resume_file  # noqa: E402


def data_agent(p, args):
    from diffrl.generate import train_data_agent
    from diffrl.runlog import RunLog
    from diffrl.utils import atomic_path, run_device, seed_everything

    ds, b = p["dataset"], p.budget
    seed_everything(ds.seed, p["deterministic"])
    resume = Path(resume_file("data_agent", args.env, ds.seed))
    with atomic_path(agent_dir(args.env)) as tmp:
        log = RunLog(None, b.sac_steps, f"SAC data agent ({args.env})", every=1000)
        info = train_data_agent(args.env, tmp, sac_cfg=p["sac"], sac_steps=b.sac_steps, sac_warmup=b.sac_warmup,
                                sac_eval_every=b.sac_eval_every, medium_target=ds.medium_target_score, seed=ds.seed,
                                device=run_device(p), log=log, resume_path=resume)
        log.close()
    resume.unlink(missing_ok=True)
    if not info["target_reached"]:
        print(f"warning: the SAC agent reached score {info['expert']['score']:.1f} < medium target "
              f"{ds.medium_target_score} within {b.sac_steps} steps; its medium policy is its last one and there "
              f"is no medium-replay data", file=sys.stderr)
    print(f"wrote {agent_dir(args.env)}: medium {info['medium']}, expert {info['expert']}")


def dataset(p, args):
    from diffrl.data import fetch_minari, file_sizes
    from diffrl.generate import make_dataset
    from diffrl.utils import atomic_path, run_device, seed_everything, write_json

    task, ds = args.task, p["dataset"]
    seed_everything(ds.seed, p["deterministic"])
    with atomic_path(dataset_dir(task.name)) as tmp:
        if task.minari_id:
            fetch_minari(task.minari_id, tmp)
            info = {"source": "minari", "minari_id": task.minari_id, "task": task.name}
        else:
            info = make_dataset(task, tmp, agent_dir=Path(agent_dir(task.env)), episodes=p.budget.dataset_episodes,
                                seed=ds.seed, device=run_device(p))
            info["source"] = "generate"
        info["files"] = file_sizes(tmp)  # lets every later run detect a truncated copy (data.dataset_damage)
        write_json(tmp / "info.json", info)
    print(f"wrote {dataset_dir(task.name)}: {info}")


if __name__ == "__main__":
    a = stage.parser(__doc__)
    a.add_argument("stage", choices=("data_agent", "dataset"))
    a.add_argument("--env", help="data_agent: the environment")
    a.add_argument("--task", type=stage.task_arg, help="dataset: the task")
    args = a.parse_args()
    if args.stage == "data_agent":
        if args.env is None:
            a.error("data_agent needs --env")
        stage.run("data_agent", args, log_file("data_agent", args.env), data_agent)
    else:
        if args.task is None:
            a.error("dataset needs --task")
        stage.run("dataset", args, log_file("dataset", args.task.name), dataset, task=args.task.name)
