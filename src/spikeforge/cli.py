"""Command line: ``spikeforge run NAME [options] --out DIR``, ``spikeforge study NAME ...``, ``spikeforge list``.

Every failure ends with one line on stderr and a non-zero exit status, never a
traceback (``--debug`` adds it):

* a bad option (argparse), bad input data, an unusable ``--out``, a checkpoint that
  does not fit, a diverged training — anything of the
  :class:`~spikeforge.errors.SpikeforgeError` hierarchy, or a ``ValueError`` /
  ``OSError`` from below — prints ``spikeforge: error: ...`` and exits with 2;
* any other exception prints ``spikeforge: error: unexpected ...`` and exits with 1;
* Ctrl-C (exit 130) and SIGTERM (exit 143) stop the run the same way: files are
  written atomically, so the last checkpoint stays intact, and the message names it.

Started by ``torchrun --nproc-per-node N -m spikeforge run ...`` (``WORLD_SIZE`` > 1),
``run`` and ``study`` first join the process group (gloo on the CPU, NCCL with
``--device cuda``) and train data-parallel; errors of ranks other than 0 say which rank.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import traceback
from types import SimpleNamespace
from typing import Iterator, NoReturn

from spikeforge import distributed
from spikeforge.errors import DivergenceError, SpikeforgeError
from spikeforge.experiments import EXPERIMENTS
from spikeforge.nir.cli import add_run_arguments as add_nir_run_arguments, run_nir
from spikeforge.train.checkpoint import forget_saved_checkpoints, last_saved_checkpoint

#: Exit status of every reported error (bad input, bad option, fault with a clear cause).
EXIT_ERROR = 2
#: Exit status of an unexpected exception (a bug).
EXIT_BUG = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``spikeforge: error: PROG: MESSAGE (see PROG --help)``."""

    def error(self, message: str) -> NoReturn:
        print(f"spikeforge: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, print the full traceback too")
    parser = _Parser(prog="spikeforge", description="spiking neural networks: convert, train, evaluate")
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments")
    run = sub.add_parser("run", help="run an experiment")
    exps = run.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for exp in EXPERIMENTS.values():
        p = exps.add_parser(exp.name, help=exp.description, description=exp.description, parents=[debug])
        exp.add_arguments(p)
    study = sub.add_parser("study", help="run a study (several models, figures and a report)")
    studies = study.add_subparsers(dest="study", required=True, metavar="NAME")
    for name, (add_arguments, _run, description) in _studies().items():
        add_arguments(studies.add_parser(name, help=description, description=description, parents=[debug]))
    nir_help = "import a NIR graph and evaluate it on a dataset at every step (needs spikeforge[nir])"
    add_nir_run_arguments(sub.add_parser("nir-run", help=nir_help, description=nir_help, parents=[debug]))
    return parser


def _studies():
    from spikeforge.experiments.backbone_study import STUDIES

    return STUDIES


def one_line(message: str) -> str:
    """A multi-line message as one line: list items ("- x") joined by commas, other lines by spaces."""
    parts: list[str] = []
    in_list = False
    for raw in str(message).splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("- ") and parts:
            parts[-1] += (", " if in_list else " ") + line[2:]
            in_list = True
        else:
            parts.append(line)
            in_list = False
    return " ".join(parts)


def _kept(args: argparse.Namespace) -> str:
    ckpt = last_saved_checkpoint()
    if ckpt is None or not ckpt.exists():
        return "no checkpoint had been written"
    how = "rerun with --resume to continue" if hasattr(args, "resume") else "rerun the same command to continue from it"
    return f"the last checkpoint, {ckpt}, is kept; {how}"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[SimpleNamespace]:
    """Turn SIGTERM into KeyboardInterrupt for the duration (main thread only)."""
    state = SimpleNamespace(received=False)

    def handler(signum, frame):  # noqa: ARG001
        state.received = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the signal alone
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error_prefix() -> str:
    return "spikeforge: error: " if distributed.is_main() else f"spikeforge: error (rank {distributed.rank()}): "


def _join_process_group(args: argparse.Namespace) -> None:
    """Under torchrun (WORLD_SIZE > 1): check --device, then join the process group."""
    if distributed.env_world_size() > 1:
        distributed.initialize(distributed.resolve_device(getattr(args, "device", "auto")))


def _report(exc: BaseException, args: argparse.Namespace) -> int:
    if getattr(args, "debug", False):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    known = isinstance(exc, (SpikeforgeError, ValueError, OSError, FloatingPointError))
    message = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "alloc" in message.lower()
                                        and "memory" in message.lower()):
        known = True
        message = f"out of memory ({message}); use smaller sizes (e.g. --batch-size, --T, the model's width)"
    if isinstance(exc, OSError) and not isinstance(exc, SpikeforgeError) and exc.filename is not None \
            and str(exc.filename) not in message:
        message += f": {exc.filename}"
    if isinstance(exc, (DivergenceError, FloatingPointError)) and "checkpoint" not in message:
        ckpt = last_saved_checkpoint()
        if ckpt is not None and ckpt.exists():
            message += f"; the last checkpoint, {ckpt}, is kept"
    if known:
        print(f"{_error_prefix()}{message}", file=sys.stderr)
        return EXIT_ERROR
    hint = "" if getattr(args, "debug", False) else "; rerun with --debug for the traceback"
    print(f"{_error_prefix()}unexpected {type(exc).__name__}: {message} (this is a bug{hint})", file=sys.stderr)
    return EXIT_BUG


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    if args.command == "list":
        for exp in EXPERIMENTS.values():
            print(f"{exp.name:20s} {exp.description}")
        for name, (_a, _r, description) in _studies().items():
            print(f"study {name:14s} {description}")
        return 0
    if args.command == "nir-run":
        runner = run_nir
    else:
        runner = _studies()[args.study][1] if args.command == "study" else EXPERIMENTS[args.experiment].run
    forget_saved_checkpoints()
    with _sigterm_as_interrupt() as term:
        try:
            if args.command in ("run", "study"):
                _join_process_group(args)
            runner(args)
        except KeyboardInterrupt as exc:
            if getattr(args, "debug", False):
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            how = "terminated (SIGTERM)" if term.received else "interrupted"
            print(f"spikeforge: {how}; {_kept(args)}", file=sys.stderr)
            return EXIT_TERMINATED if term.received else EXIT_INTERRUPTED
        except Exception as exc:  # every failure ends as one line, never a traceback
            return _report(exc, args)
        finally:
            distributed.finalize()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
