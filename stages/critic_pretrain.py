"""Stage `critic_pretrain`: IQL critic (and its AWR policy, the `iql` row) on data/{env}/dataset."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import dataset_dir, log_file, resume_file, run_dir  # noqa: E402


def main(p, args):
    from diffrl.algos.iql import IQL
    from diffrl.offline import train_run
    from diffrl.utils import atomic_path, pick_device, seed_everything

    cfg, b = p["iql"], p.budget
    seed_everything(args.seed, p["deterministic"])

    def extra(data):  # IQL's locomotion reward scaling is a property of the dataset
        return {"reward_scale": data.locomotion_reward_scale() if cfg.reward_scaling == "locomotion" else 1.0}

    with atomic_path(run_dir(args.env, "iql", args.seed)) as tmp:
        info = train_run(IQL, cfg, env_name=args.env, dataset_dir=dataset_dir(args.env), out_dir=tmp, seed=args.seed,
                         steps=b.critic_steps, eval_every=b.eval_every, curve_episodes=b.curve_episodes,
                         device=pick_device(p["device"]), budget=p["budget"], resume_path=Path(resume_file("critic_pretrain", args.env, args.seed)),
                         extra_fn=extra)
    Path(resume_file("critic_pretrain", args.env, args.seed)).unlink(missing_ok=True)
    print(f"critic_pretrain {args.env} seed {args.seed}: {info['grad_steps']} steps in {info['wall_s']:.0f}s")


if __name__ == "__main__":
    a = stage.parser(__doc__)
    a.add_argument("--env", required=True)
    a.add_argument("--seed", type=int, required=True)
    args = a.parse_args()
    stage.run("critic_pretrain", args, log_file("critic_pretrain", args.env, f"seed{args.seed}"), main)
