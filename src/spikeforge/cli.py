"""Command line: ``spikeforge run NAME [options] --out DIR`` and ``spikeforge list``."""

from __future__ import annotations

import argparse
import sys

from spikeforge.experiments import EXPERIMENTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikeforge", description="spiking neural networks: convert, train, evaluate")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments")
    run = sub.add_parser("run", help="run an experiment")
    exps = run.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for exp in EXPERIMENTS.values():
        p = exps.add_parser(exp.name, help=exp.description, description=exp.description)
        exp.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        for exp in EXPERIMENTS.values():
            print(f"{exp.name:20s} {exp.description}")
        return 0
    exp = EXPERIMENTS[args.experiment]
    try:
        exp.run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"spikeforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikeforge: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
