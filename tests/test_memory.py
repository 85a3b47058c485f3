"""keep_freed_memory: glibc settings applied once, and an environment switch to leave them alone."""

from __future__ import annotations

import subprocess
import sys

CODE = ("from spikeforge._native.memory import keep_freed_memory as k; "
        "import ctypes.util; print(k(), k(), bool(ctypes.util.find_library('c')))")


def _run(env_value: str | None) -> list[str]:
    import os

    env = dict(os.environ)
    env.pop("SPIKEFORGE_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["SPIKEFORGE_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_keep_freed_memory_applies_once_or_is_switched_off():
    on = _run(None)
    if on[2] == "True" and sys.platform.startswith("linux"):  # glibc: mallopt exists
        assert on[:2] == ["True", "True"]
    assert _run("0")[:2] == ["False", "False"]
    assert _run("off")[:2] == ["False", "False"]
