"""Devices (``--device``), the native-vs-PyTorch reference, and the pieces of data parallelism
that run in one process (shards, merged spike statistics)."""

from __future__ import annotations

import pytest
import torch

from spikeforge import convert, distributed
from spikeforge.cli import main
from spikeforge.errors import ConfigError
from spikeforge.evaluate import evaluate_snn, merge_summaries
from spikeforge.functional.lif import lif_seq
from spikeforge.models import create_model


def test_resolve_device_here():
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.resolve_device("auto").type == expected
    for bad, needle in (("tpu", "expected auto, cpu, cuda or cuda:K"), ("cuda:x", "integer K"),
                        ("cuda:-1", ">= 0"), ("", "expected auto")):
        with pytest.raises(ConfigError, match=needle):
            distributed.resolve_device(bad)
    if torch.cuda.is_available():
        assert distributed.resolve_device("cuda").type == "cuda"
        with pytest.raises(ConfigError, match="does not exist"):
            distributed.resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        for spec in ("cuda", "cuda:0", "cuda:3"):
            with pytest.raises(ConfigError, match=f"--device {spec}: .*use --device cpu"):
                distributed.resolve_device(spec)


@pytest.mark.parametrize("argv", [
    ["run", "lenet5-convert", "--epochs", "1"],
    ["study", "backbones", "--preset", "smoke"],
])
def test_device_option_errors_in_one_line_before_any_work(argv, tmp_path, capsys):
    out = tmp_path / "out"
    bad = "cuda:99" if torch.cuda.is_available() else "cuda"
    code = main([*argv, "--device", bad, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"spikeforge: error: --device {bad}: "), err
    assert not out.exists()


def test_shard_bounds_cover_every_item_once():
    for n in (0, 1, 5, 64, 101):
        for ranks in (1, 2, 3, 8):
            parts = [distributed.shard_bounds(n, ranks=ranks, index=r) for r in range(ranks)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [e - s for s, e in parts]
            assert max(sizes) - min(sizes) <= 1
    assert distributed.shard_bounds(10) == (0, 10)  # outside a process group: everything


def test_spike_statistics_of_shards_merge_into_those_of_the_whole_set():
    """What a sharded evaluation gathers: two halves' summaries merged = the summary of all images."""
    torch.manual_seed(0)
    ann = create_model("lenet5").eval()
    x, y = torch.rand(40, 1, 28, 28), torch.arange(40) % 10
    snn = convert(ann, x[:32], batch_size=32, max_batches=1)
    whole = evaluate_snn(snn, x, y, 6, batch_size=16)["spike_stats"]
    halves = [evaluate_snn(snn, x[a:b], y[a:b], 6, batch_size=16)["spike_stats"] for a, b in ((0, 17), (17, 40))]
    merged = merge_summaries(halves)
    assert merged["images"] == 40 and merged["T"] == 6

    def same(a, b, path=""):
        if isinstance(a, dict):
            assert set(a) == set(b), path
            for k in a:
                same(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, list):
            assert len(a) == len(b), path
            for i, (u, v) in enumerate(zip(a, b)):
                same(u, v, f"{path}[{i}]")
        elif isinstance(a, float):
            assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
        else:
            assert a == b, path

    same(whole, merged)


@pytest.mark.parametrize("name, kw", [("fc-lif", dict(hidden=16, T=5)), ("csnn", dict(channels=4, T=3))])
def test_native_and_pytorch_paths_agree_on_a_whole_network(name, kw, monkeypatch):
    """The reference for other devices: the PyTorch path (what a GPU runs) against the C kernels."""
    torch.manual_seed(0)
    model = create_model(name, **kw)
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6) % 10
    results = []
    for native in ("1", "0"):
        monkeypatch.setenv("SPIKEFORGE_NATIVE", native)
        model.zero_grad(set_to_none=True)
        out = model(x)
        score = out.membrane if out.membrane is not None else out.spikes
        torch.nn.functional.cross_entropy(score.float().mean(0), y).backward()
        results.append((out.spikes.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (s_native, g_native), (s_torch, g_torch) = results
    assert torch.equal(s_native, s_torch)
    for n in g_native:
        torch.testing.assert_close(g_native[n], g_torch[n], atol=1e-5, rtol=1e-4, msg=n)


def test_converted_network_native_and_pytorch_paths_agree(monkeypatch):
    torch.manual_seed(1)
    ann = create_model("lenet5").eval()
    x = torch.rand(8, 1, 28, 28)
    snn = convert(ann, x, batch_size=8, max_batches=1)
    outs = []
    for native in ("1", "0"):
        monkeypatch.setenv("SPIKEFORGE_NATIVE", native)
        outs.append(snn(x, 12))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_other_devices_take_the_pytorch_path():
    """A tensor off the CPU (here the shape-only meta device) never reaches the C kernels."""
    x = torch.randn(4, 3, 5, device="meta", requires_grad=True)
    s, h, v = lif_seq(x, beta=0.9)
    (s.sum() + h.sum()).backward()
    assert s.device.type == h.device.type == x.grad.device.type == "meta"
