"""Progress bars that suit both a terminal and a log file.

:func:`progress` is the one helper every loop uses. On a terminal (stderr is a TTY)
it is an ordinary transient :mod:`tqdm` bar. Otherwise — output redirected to a log,
a pipe, a batch job — a bar would write thousands of carriage-return frames, so it
prints a plain line instead every :data:`LOG_INTERVAL` seconds::

    epoch 3/20: 120/938 (13%), 41 s, 2.9 it/s, loss=0.3121, acc=0.8873

The interval can be set with the environment variable ``SPIKEFORGE_PROGRESS_SECONDS``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

from tqdm import tqdm

__all__ = ["LOG_INTERVAL", "LogProgress", "progress"]


def _interval_from_env(default: float = 10.0) -> float:
    try:
        value = float(os.environ.get("SPIKEFORGE_PROGRESS_SECONDS", default))
    except ValueError:
        return default
    return value if value >= 0 and value == value and value != float("inf") else default


#: Seconds between two plain progress lines when stderr is not a terminal.
LOG_INTERVAL: float = _interval_from_env()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class LogProgress:
    """An iterable wrapper that prints one plain progress line every ``interval`` seconds.

    It offers the part of tqdm's interface the loops use: iteration, ``n``, ``total``,
    ``set_postfix``, ``set_description`` and ``close``.
    """

    def __init__(
        self,
        iterable: Iterable[Any],
        *,
        total: int | None = None,
        desc: str = "",
        initial: int = 0,
        interval: float | None = None,
        file: TextIO | None = None,
    ) -> None:
        self.iterable = iterable
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.desc = desc
        self.n = int(initial)
        self._initial = int(initial)
        self.interval = LOG_INTERVAL if interval is None else float(interval)
        self.file = file
        self.postfix: dict[str, str] = {}
        self._start = self._last = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._print(now)

    def __len__(self) -> int:
        return self.total if self.total is not None else 0

    def line(self, now: float | None = None) -> str:
        """The progress line as it would be printed now."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._start
        done = self.n - self._initial
        parts = [f"{self.n}/{self.total}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")
                 if self.total is not None else f"{self.n}"]
        parts.append(f"{elapsed:.0f} s")
        if done > 0 and elapsed > 0:
            parts.append(f"{done / elapsed:.3g} it/s")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _print(self, now: float) -> None:
        stream = self.file if self.file is not None else sys.stderr
        print(self.line(now), file=stream, flush=True)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        values = dict(ordered_dict or {}, **kwargs)
        self.postfix = {k: (v if isinstance(v, str) else f"{v:.4g}" if isinstance(v, float) else str(v))
                        for k, v in values.items()}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(
    iterable: Iterable[Any],
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    initial: int = 0,
    mininterval: float = 1.0,
    leave: bool = False,
) -> Any:
    """Wrap ``iterable`` in a progress display (see the module docstring).

    ``enabled=False`` gives a silent wrapper (tqdm's ``disable``). The result
    supports iteration, ``.n``, ``.set_postfix(...)`` and ``.close()`` either way.
    """
    if enabled and not _is_terminal(sys.stderr):
        return LogProgress(iterable, total=total, desc=desc, initial=initial)
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, initial=initial,
                mininterval=mininterval, leave=leave)
