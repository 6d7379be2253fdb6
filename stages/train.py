"""Stages `critic_pretrain`, `behavior_pretrain` and `offline_train`: train one params section
on data/{task}/dataset for one seed and write runs/{task}/{section}/seed{seed}/.

    python stages/train.py critic_pretrain --critic dtql_critic --task halfcheetah-medium --seed 0
    python stages/train.py behavior_pretrain --behavior dtql_behavior --task halfcheetah-medium --seed 0
    python stages/train.py offline_train --algo dtql --task halfcheetah-medium --seed 0
Every offline row is an offline_train job; a row that starts from pretrained parts (DTQL, say) loads
the critic and behaviour checkpoints of its own pretraining runs (diffrl.algos.REGISTRY)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import STAGES, dataset_dir, log_file, resume_file, run_dir  # noqa: E402

# stage -> the argument naming the section it trains (its row wildcard in diffrl.pipeline.STAGES)
WILDCARD = {s: st.row for s, st in STAGES.items() if st.command.startswith("python stages/train.py ")}


def main(p, args):
    from diffrl.algos import PRETRAINED, REGISTRY, ROWS
    from diffrl.offline import train_run
    from diffrl.pipeline import budget_steps
    from diffrl.utils import atomic_path, run_device, seed_everything

    section, task = getattr(args, WILDCARD[args.stage]), args.task
    cfg, b = p[section], p.budget
    row = section in ROWS  # evaluated along the way; pretraining-only runs read no curve settings
    seed_everything(args.seed, p["deterministic"])
    pretrained = None
    if section in PRETRAINED:
        critic, behavior = PRETRAINED[section]
        pretrained = {"critic": run_dir(task.name, critic, args.seed), "behavior": run_dir(task.name, behavior, args.seed)}
    resume = Path(resume_file(section, task.name, args.seed))
    with atomic_path(run_dir(task.name, section, args.seed)) as tmp:
        info = train_run(section, cfg, env_name=task.env, dataset_dir=dataset_dir(task.name), out_dir=tmp,
                         seed=args.seed, steps=budget_steps(section, b), eval_every=b.eval_every if row else None,
                         curve_episodes=b.curve_episodes if row else None, device=run_device(p),
                         resume_path=resume, budget=p["budget"], pretrained=pretrained,
                         **{arg: getattr(b, key) for arg, key in REGISTRY[section].budget_args.items()})
    resume.unlink(missing_ok=True)
    print(f"{args.stage} {section} {task.name} seed {args.seed}: {info['grad_steps']} steps in {info['wall_s']:.0f}s")


if __name__ == "__main__":
    import diffrl.algos
    a = stage.parser(__doc__)
    a.add_argument("stage", choices=list(WILDCARD))
    for name, key in WILDCARD.items():  # --critic, --behavior, --algo: the sections of each stage
        a.add_argument(f"--{key}", choices=getattr(diffrl.algos, STAGES[name].sections))
    a.add_argument("--task", required=True, type=stage.task_arg)
    a.add_argument("--seed", type=int, required=True)
    args = a.parse_args()
    key = WILDCARD[args.stage]
    if getattr(args, key) is None:
        a.error(f"{args.stage} needs --{key}")
    section = getattr(args, key)
    stage.run(args.stage, args, log_file(args.stage, args.task.name, section, f"seed{args.seed}"), main,
              task=args.task.name, **{key: section})
