"""Run by tests/test_distributed.py, alone or under torchrun: one spikeforge command line.

Afterwards each rank saves, into the dump folder given first, the weights its training
ended with (``rank{R}.pt``; nothing when interrupted) and the files it created or renamed anywhere below the
command's ``--out`` (``rank{R}.writes``), so the test can compare ranks and check that
only rank 0 wrote. ``SPIKEFORGE_TEST_STOP_AFTER_EPOCH=E`` interrupts a BPTT training
(Ctrl-C) right after epoch E, as a user would. This file is test scaffolding; spikeforge knows nothing of it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

dump = Path(sys.argv[1])
argv = sys.argv[2:]
out = Path(argv[argv.index("--out") + 1]).resolve()
rank = int(os.environ.get("RANK", "0"))
writes: list[str] = []
captured: dict[str, torch.Tensor] = {}

real_mkstemp, real_replace = tempfile.mkstemp, os.replace


def mkstemp(*args, **kwargs):
    fd, path = real_mkstemp(*args, **kwargs)
    if Path(path).resolve().is_relative_to(out):
        writes.append(f"create {path}")
    return fd, path


def replace(src, dst, *args, **kwargs):
    if Path(dst).resolve().is_relative_to(out):
        writes.append(f"replace {dst}")
    return real_replace(src, dst, *args, **kwargs)


tempfile.mkstemp, os.replace = mkstemp, replace


stop_after = int(os.environ.get("SPIKEFORGE_TEST_STOP_AFTER_EPOCH", "0"))


def capturing(train):
    def run(model, *args, **kwargs):
        if stop_after and "on_epoch" in kwargs:  # an interruption right after that epoch's checkpoint
            user = kwargs["on_epoch"]

            def on_epoch(epoch, row):
                if user is not None:
                    user(epoch, row)
                if epoch == stop_after:
                    if torch.distributed.is_initialized():
                        torch.distributed.barrier()  # rank 0 has written the checkpoint: all stop together
                    raise KeyboardInterrupt

            kwargs["on_epoch"] = on_epoch
        result = train(model, *args, **kwargs)
        captured.update({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return result
    return run


import spikeforge.experiments.lenet5_convert as lenet5_convert  # noqa: E402

lenet5_convert.train_classifier = capturing(lenet5_convert.train_classifier)
try:
    import spikeforge.experiments.direct_train as direct_train  # noqa: E402

    direct_train.fit_snn = capturing(direct_train.fit_snn)
except ImportError:  # pragma: no cover
    pass

from spikeforge.cli import main  # noqa: E402

sys.argv = ["spikeforge", *argv]  # as the console script would see it
code = main(argv)
dump.mkdir(parents=True, exist_ok=True)
torch.save(captured, dump / f"rank{rank}.pt")
(dump / f"rank{rank}.writes").write_text("\n".join(writes) + "\n")
sys.exit(code)
