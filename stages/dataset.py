"""Stage `dataset`: build data/{env}/dataset, a Minari dataset (generated locally or fetched)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import dataset_dir, log_file, resume_file  # noqa: E402


def main(p, args):
    from diffrl.data import fetch_minari, file_sizes
    from diffrl.generate import generate_dataset
    from diffrl.runlog import RunLog
    from diffrl.utils import atomic_path, run_device, seed_everything, write_json

    ds, b = p["dataset"], p.budget
    device = run_device(p)
    seed_everything(ds.seed, p["deterministic"])
    out = Path(dataset_dir(args.env))
    resume = Path(resume_file("dataset_sac", args.env, ds.seed))
    with atomic_path(out) as tmp:
        if ds.source == "minari":
            dataset_id = ds.minari_ids.get(args.env)
            if not dataset_id:
                raise stage.ConfigError(f"dataset.minari_ids has no entry for '{args.env}': add one")
            fetch_minari(dataset_id, tmp)
            info = {"source": "minari", "minari_id": dataset_id}
        else:
            log = RunLog(None, b.sac_steps, f"SAC ({args.env}, {ds.quality})", every=1000)
            info = generate_dataset(args.env, ds.quality, tmp, sac_cfg=p["sac"], sac_steps=b.sac_steps,
                                    sac_warmup=b.sac_warmup, sac_eval_every=b.sac_eval_every,
                                    episodes=b.dataset_episodes, medium_target=ds.medium_target_score,
                                    seed=ds.seed, device=device, log=log, resume_path=resume)
            info["wall_s"] = log.close()
            info["source"] = "generate"
            if info.get("target_reached") is False:
                print(f"warning: the SAC agent reached score {info['agent_score']:.1f} < target "
                      f"{ds.medium_target_score} within {b.sac_steps} steps; the dataset is labelled with "
                      f"the score it has", file=sys.stderr)
        info["files"] = file_sizes(tmp)  # lets every later run detect a truncated copy (data.dataset_damage)
        write_json(tmp / "info.json", info)
    resume.unlink(missing_ok=True)
    print(f"wrote {out}: {info}")


if __name__ == "__main__":
    a = stage.parser(__doc__)
    a.add_argument("--env", required=True)
    args = a.parse_args()
    stage.run("dataset", args, log_file("dataset", args.env), main)
