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
    ["run", "fc-lif", "--epochs", "1"],
    ["run", "fc-poisson", "--epochs", "1"],
    ["run", "csnn", "--epochs", "1", "--sync-bn"],
    ["run", "cifar-convert", "--epochs", "1"],
    ["run", "unet-convert", "--quick"],
])
def test_device_option_errors_in_one_line_before_any_work(argv, tmp_path, capsys):
    out = tmp_path / "out"
    bad = "cuda:99" if torch.cuda.is_available() else "cuda"
    code = main([*argv, "--device", bad, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"spikeforge: error: --device {bad}: "), err
    assert not out.exists()


def test_every_experiment_takes_device_and_sync_bn_where_it_has_batchnorm():
    from spikeforge.cli import build_parser

    parser = build_parser()
    for name in ("lenet5-convert", "fc-lif", "fc-poisson", "csnn", "cifar-convert", "unet-convert"):
        args = parser.parse_args(["run", name, "--device", "cuda:1"])
        assert args.device == "cuda:1", name
        assert parser.parse_args(["run", name]).device == "auto", name
    for name in ("lenet5-convert", "csnn", "cifar-convert", "unet-convert"):  # networks with BatchNorm
        assert parser.parse_args(["run", name, "--sync-bn"]).sync_bn is True, name
    for name in ("fc-lif", "fc-poisson"):  # no BatchNorm: no --sync-bn
        with pytest.raises(SystemExit):
            parser.parse_args(["run", name, "--sync-bn"])


def test_fc_poisson_trains_on_the_named_device(tmp_path):
    """--device cpu reaches the training and metrics.json (on a GPU machine --device cuda too: the Poisson
    spikes come from a CPU generator there as well)."""
    import json

    from spikeforge.data.idx import write_idx

    rng = torch.Generator().manual_seed(0)
    (tmp_path / "data").mkdir()
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / "data" / f"{prefix}-images-idx3-ubyte.gz",
                  (torch.rand(n, 28, 28, generator=rng) * 255).to(torch.uint8).numpy())
        write_idx(tmp_path / "data" / f"{prefix}-labels-idx1-ubyte.gz", (torch.arange(n) % 10).to(torch.uint8).numpy())
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        out = tmp_path / device
        code = main(["run", "fc-poisson", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                     "--T", "4", "--batch-size", "20", "--device", device, "--no-progress", "--out", str(out)])
        assert code == 0
        m = json.loads((out / "metrics.json").read_text())
        assert m["device"].startswith(device) and m["processes"] == 1


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


def test_shares_of_a_batch_draw_the_random_numbers_of_the_whole_batch():
    """What a data-parallel rank does with rows=(start, end, total): Poisson spikes and dropout masks
    of its share equal those rows of a one-process draw on the whole batch."""
    from spikeforge.encoding import poisson

    x = torch.rand(7, 1, 28, 28)
    whole = poisson(x, 5, generator=torch.Generator().manual_seed(3))
    for start, end in ((0, 4), (4, 7), (7, 7)):
        part = poisson(x[start:end], 5, generator=torch.Generator().manual_seed(3), rows=(start, end, 7))
        assert torch.equal(part, whole[:, start:end])
    with pytest.raises(ValueError, match="rows"):
        poisson(x[:3], 5, rows=(0, 4, 7))
    torch.manual_seed(0)
    for name, kw in (("fc-lif", dict(hidden=12, T=3, dropout=0.5)), ("fc-poisson", dict(T=3))):
        model = create_model(name, **kw).train()
        full = model(x, generator=torch.Generator().manual_seed(1))
        for start, end in ((0, 4), (4, 7)):
            share = model(x[start:end], generator=torch.Generator().manual_seed(1), rows=(start, end, 7))
            assert torch.equal(share.spikes, full.spikes[:, start:end]), name
            torch.testing.assert_close(share.membrane, full.membrane[:, start:end], rtol=1e-6, atol=1e-6)
