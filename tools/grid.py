"""The experiment grid behind the paper's tables: one command per (data, model, method, seed).

    python -m tools.grid                              # print every command
    python -m tools.grid --data cifar10 --models resnet18 --seeds 1 2 3 --run
    python -m tools.report runs/                      # then the table

Each command writes runs/<data>-<model>/<method>-seed<N>/. Pass extra flags for every command after `--`
(e.g. `-- --n-eval-aa 1000`).
"""
import argparse
import shlex
import subprocess
import sys

ROWS = {  # method -> (script, extra flags)
    "AT": ("train_eval_part.py", ["--no-mask"]),
    "PART": ("train_eval_part.py", []),
    "TRADES": ("train_eval_part_t.py", ["--no-mask"]),
    "PART-T": ("train_eval_part_t.py", []),
    "MART": ("train_eval_part_m.py", ["--no-mask"]),
    "PART-M": ("train_eval_part_m.py", []),
    "MMA": ("train_eval_part.py", ["--attack", "mma", "--no-mask"]),
    "PART-MMA": ("train_eval_part.py", ["--attack", "mma"]),
}
DEFAULT_METHODS = ["AT", "PART", "TRADES", "PART-T", "MART", "PART-M"]


def commands(data, models, methods, seeds, root="runs", python="python", extra=()):
    out = []
    for d in data:
        for m in models:
            for method in methods:
                script, flags = ROWS[method]
                for s in seeds:
                    folder = f"{root}/{d}-{m}/{method}-seed{s}"
                    out.append([python, script, "--data", d, "--model", m, *flags, "--seed", str(s),
                                "--out", folder, *extra])
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=["cifar10", "svhn", "tinyimagenet"])
    p.add_argument("--models", nargs="+", default=["resnet18", "wrn34-10"])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--root", default="runs")
    p.add_argument("--run", action="store_true", help="run the commands one after another")
    args = p.parse_args(argv)
    cmds = commands(args.data, args.models, args.methods, args.seeds, args.root, extra=extra)
    for c in cmds:
        print(shlex.join(c))
        if args.run:
            code = subprocess.call([sys.executable, *c[1:]])
            if code:
                print(f"command failed with exit code {code}", file=sys.stderr)
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
