"""Stage `evaluate`: final evaluation of one trained row in the real environment.

Writes runs/{task}/eval/{algo}/seed{seed}.json: the final score (fresh evaluation episodes,
separate seeds from training), raw returns, and the best-during-training score: the best of the
run's evaluations when each had eval_episodes episodes or more (curve_episodes >= eval_episodes), as
the references select a best checkpoint; none when its curve points had fewer (a best of 2-episode
evaluations is optimistic). Scores
are normalised with the reference scores the run recorded in its train.json (an offline run's
dataset's; diffrl.envs.reference_scores), the built-in D4RL table where it recorded none.
Online rows act through their agent's `act`: for SDAC/DPMD the reference protocol (EMA policy
without tilt, argmax of min(Q1, Q2) over num_particles, no noise; eval_tilt: true evaluates
under the tilt), for the SAC row tanh of the Gaussian mean. A tilted row (diffrl.algos.tilted)
evaluates its base row's run of the same seed under its section's tilt, on the base row's episodes;
its curve is that final point alone (the base run's curve is untilted)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import eval_file, log_file, run_dir  # noqa: E402


def main(p, args):
    import numpy as np
    from diffrl.algos import TILT_BASES
    from diffrl.envs import evaluate, final_seed, normalized_score, reference_scores
    from diffrl.offline import load_agent
    from diffrl.train import policy_fn
    from diffrl.utils import read_json, run_device, seed_everything, write_json

    task = args.task
    seed_everything(args.seed, p["deterministic"])
    tilted = args.algo in TILT_BASES
    if tilted:
        from diffrl.algos.tilted import load_tilted
        agent, train = load_tilted(args.algo, p[args.algo], task.name, args.seed, run_device(p))
    else:
        rdir = run_dir(task.name, args.algo, args.seed)
        train = read_json(Path(rdir) / "train.json")
        agent, _ = load_agent(rdir, run_device(p))
    ep_seed = final_seed(args.seed)
    cap = p.budget.max_episode_steps
    returns = evaluate(policy_fn(agent, ep_seed), task.env, p.budget.eval_episodes, ep_seed, cap)
    reference = reference_scores(task.env, train.get("reference_scores"))
    scores = normalized_score(task.env, returns, reference)
    # the learning curve ends with this final evaluation; its x axis is gradient steps for offline
    # rows and environment steps for online ones
    online = bool(train.get("online", False))
    last = int(train.get("env_steps" if online else "grad_steps", 0))
    final = {"step": last, "return": float(returns.mean()), "score": float(scores.mean())}
    curve = [final] if tilted else train.get("curve", []) + [final]
    result = {
        "algorithm": args.algo, "task": task.name, "env": task.env, "seed": args.seed,
        "final_score": float(scores.mean()), "final_return": float(returns.mean()),
        "episode_returns": returns.tolist(), "eval_episodes": int(len(returns)),
        "best_during_training_score": (float(max([c["score"] for c in curve] + [scores.mean()]))
                                       if p.budget.curve_episodes >= p.budget.eval_episodes else None),
        "curve": curve, "grad_steps": int(train.get("grad_steps", 0)), "env_steps": int(train.get("env_steps", 0)),
        # wall time of the row: its own training plus the pretraining runs it started from
        "wall_s": float(train.get("wall_s", 0.0)) + float(train.get("pretraining_wall_s", 0.0)),
        "run_info": train.get("run_info", {}), "online": online, "step_unit": "env" if online else "grad",
        "max_episode_steps": int(cap), "reference_scores": reference,
    }
    if tilted:
        result["base"] = TILT_BASES[args.algo]
    selection = train.get("selection")
    if selection and not tilted and "final_bc_loss" in train and all("bc_loss" in c for c in curve[:-1]):
        # offline model selection (no evaluation return is looked at): the chosen checkpoint's score
        # is the evaluation made at that checkpoint (curve_episodes episodes; the final one: eval_episodes)
        from diffrl.algos.dql import select_checkpoint
        curve[-1]["bc_loss"] = train["final_bc_loss"]
        idx = select_checkpoint(curve, "offline", selection["k"], selection["published"])
        result.update(offline_selected_score=float(curve[idx]["score"]), offline_selected_step=int(curve[idx]["step"]))
    write_json(eval_file(task.name, args.algo, args.seed), result)
    print(f"{args.algo} {task.name} seed {args.seed}: return {returns.mean():.1f}, score {np.mean(scores):.2f}")


if __name__ == "__main__":
    a = stage.parser(__doc__)
    a.add_argument("--task", required=True, type=stage.task_arg)
    a.add_argument("--algo", required=True)
    a.add_argument("--seed", type=int, required=True)
    args = a.parse_args()
    stage.run("evaluate", args, log_file("evaluate", args.task.name, args.algo, f"seed{args.seed}"), main,
              algo=args.algo, task=args.task.name)
