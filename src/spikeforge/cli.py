"""Command line: ``spikeforge run NAME [options] --out DIR``, ``spikeforge study NAME ...``, ``spikeforge list``."""

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
    study = sub.add_parser("study", help="run a study (several models, figures and a report)")
    studies = study.add_subparsers(dest="study", required=True, metavar="NAME")
    for name, (add_arguments, _run, description) in _studies().items():
        add_arguments(studies.add_parser(name, help=description, description=description))
    return parser


def _studies():
    from spikeforge.experiments.backbone_study import STUDIES

    return STUDIES


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        for exp in EXPERIMENTS.values():
            print(f"{exp.name:20s} {exp.description}")
        for name, (_a, _r, description) in _studies().items():
            print(f"study {name:14s} {description}")
        return 0
    runner = _studies()[args.study][1] if args.command == "study" else EXPERIMENTS[args.experiment].run
    try:
        runner(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"spikeforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikeforge: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
