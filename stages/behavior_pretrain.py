"""Stage `behavior_pretrain`: diffusion behaviour cloning (the `bc` row) on data/{env}/dataset."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import dataset_dir, log_file, resume_file, run_dir  # noqa: E402


def main(p, args):
    from diffrl.algos.bc import DiffusionBC
    from diffrl.offline import train_run
    from diffrl.utils import atomic_path, pick_device, seed_everything

    cfg, b = p["bc"], p.budget
    seed_everything(args.seed, p["deterministic"])

    with atomic_path(run_dir(args.env, "bc", args.seed)) as tmp:
        info = train_run(DiffusionBC, cfg, env_name=args.env, dataset_dir=dataset_dir(args.env), out_dir=tmp, seed=args.seed,
                         steps=b.behavior_steps, eval_every=b.eval_every, curve_episodes=b.curve_episodes,
                         device=pick_device(p["device"]), budget=p["budget"], resume_path=Path(resume_file("behavior_pretrain", args.env, args.seed)))
    Path(resume_file("behavior_pretrain", args.env, args.seed)).unlink(missing_ok=True)
    print(f"behavior_pretrain {args.env} seed {args.seed}: {info['grad_steps']} steps in {info['wall_s']:.0f}s")


if __name__ == "__main__":
    a = stage.parser(__doc__)
    a.add_argument("--env", required=True)
    a.add_argument("--seed", type=int, required=True)
    args = a.parse_args()
    stage.run("behavior_pretrain", args, log_file("behavior_pretrain", args.env, f"seed{args.seed}"), main)
