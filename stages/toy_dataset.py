"""Stage `toy_dataset`: write data/toy/{name}.npz, a 2-D toy bandit dataset."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl import stage  # noqa: E402
from diffrl.pipeline import log_file, toy_file  # noqa: E402


def main(p, args):
    import numpy as np
    from diffrl.data import toy_dataset
    from diffrl.utils import atomic_path

    data = toy_dataset(args.name, p.budget.toy_samples, seed=0)
    with atomic_path(toy_file(args.name)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **data)
    print(f"wrote {toy_file(args.name)}: {len(data['action'])} samples")


if __name__ == "__main__":
    a = stage.parser(__doc__)
    a.add_argument("--name", required=True)
    args = a.parse_args()
    stage.run("toy_dataset", args, log_file("toy_dataset", args.name), main)
