"""Stage `online_train`: train one online row (the fork's SAC, or a named SDAC/DPMD variant) in
the environment of its task for one seed and write runs/{task}/{algo}/seed{seed}/. Each row reads its section
(the `sac` row: sac_online, since `sac` is the dataset agent's).

    python stages/online.py --algo dpmd_tilt --task halfcheetah-medium --seed 0
The guided variants read the top-level tfg_lambda; an offline-to-online row (offline_init set,
e.g. dpmd_o2o) starts from runs/{task}/{offline_init}/seed{seed}. An online row reads no dataset: two
tasks of one environment train the same run (select online rows with one task per environment). Resume checkpoints (model,
optimisers, replay buffer, env and RNG states) go to runs/.resume/ every online_eval_every env steps."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import log_file, resume_file, run_dir  # noqa: E402


def main(p, args):
    from diffrl.algos import section_of
    from diffrl.online import effective_config, train_online_run
    from diffrl.utils import atomic_path, run_device, seed_everything

    b = p.budget
    tfg = p["tfg_lambda"] if "tfg_lambda" in p.declared else 0.0
    cfg = effective_config(args.algo, p[section_of(args.algo)], tfg, b)
    offline = getattr(cfg, "offline_init", "")
    offline_run = run_dir(args.task.name, offline, args.seed) if offline else None
    if offline_run is not None and not Path(offline_run).exists():
        raise FileNotFoundError(f"{offline_run} is missing: {args.algo} starts from it; run "
                                f"`snakemake {offline_run}` (or the whole target) first")
    seed_everything(args.seed, p["deterministic"])
    resume = Path(resume_file(args.algo, args.task.name, args.seed))
    with atomic_path(run_dir(args.task.name, args.algo, args.seed)) as tmp:
        info = train_online_run(args.algo, cfg, env_name=args.task.env, out_dir=tmp, seed=args.seed, budget=b,
                                budget_name=p["budget"], device=run_device(p), resume_path=resume,
                                offline_run=offline_run)
    resume.unlink(missing_ok=True)
    print(f"online_train {args.algo} {args.task.name} seed {args.seed}: {info['env_steps']} env steps, "
          f"{info['grad_steps']} updates in {info['wall_s']:.0f}s")


if __name__ == "__main__":
    from diffrl.algos import ONLINE
    a = stage.parser(__doc__)
    a.add_argument("--algo", required=True, choices=ONLINE)
    a.add_argument("--task", required=True, type=stage.task_arg)
    a.add_argument("--seed", type=int, required=True)
    args = a.parse_args()
    stage.run("online_train", args, log_file("online_train", args.task.name, args.algo, f"seed{args.seed}"), main,
              algo=args.algo, task=args.task.name)
