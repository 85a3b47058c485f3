"""Move CIFAR-10 and trained networks to and from a lent accelerator machine within its size limits.

The device tool copies at most 64 MiB of the working tree there and brings back files of at
most 16 MiB (64 MiB together). CIFAR-10's 50,000 training images are 150 MB raw and a
full-width ResNet-18 checkpoint is 45 MB, so:

``pack``    (here)   the five ``data_batch_*.bin`` files → one file: the ``--val-split N``
                     held-out images exactly (LZMA), the training images JPEG-coded at quality
                     75 with 4:2:0 chroma. Our copy of CIFAR-10 was itself rebuilt from such
                     JPEGs, so coding it again changes little: mean absolute pixel error 0.16
                     of 255 on the training images. Held-out figures are on the exact pixels.
``unpack``  (there)  → ``data_batch_1.bin`` … ``data_batch_5.bin`` in the official record
                     layout, same order, same labels.
``export``  (there)  a run's ``model.pt`` → parts of at most 15 MiB, tensors with more than
                     4,096 elements stored as float16 (range checked), the rest as float32.
``import``  (here)   the parts → ``model.pt`` (float32), written with the project's checkpoint
                     writer so ``spikeforge run cifar-convert`` with the same options reuses it.

Usage::

    python benchmarks/device_transport.py pack --data-dir ../shared/data/cifar10 --val-split 10000 --out .devdata/cifar.sfj
    python benchmarks/device_transport.py unpack --src .devdata/cifar.sfj --out /tmp/cifar10
    python benchmarks/device_transport.py export --run runs/x --out $OUT/x
    python benchmarks/device_transport.py import --parts DIR/x --run runs/x
"""

from __future__ import annotations

import argparse
import io
import lzma
import struct
import sys
from pathlib import Path

import numpy as np
import torch

MAGIC = b"SFJPEG2\n"
MAGIC_SUBSET = b"SFJPEG3\n"  # also a mask of the training images carried (pack --train-keep)
RECORD = 3073
PART = 15 * 2**20
FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 1}, {"id": lzma.FILTER_LZMA2, "preset": 9}]


def _batches(data_dir: Path) -> np.ndarray:
    root = data_dir / "cifar-10-batches-bin" if (data_dir / "cifar-10-batches-bin").is_dir() else data_dir
    parts = []
    for i in range(1, 6):
        f = root / f"data_batch_{i}.bin"
        if not f.is_file():
            sys.exit(f"{f}: missing (pack needs data_batch_1.bin … data_batch_5.bin)")
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size % RECORD:
            sys.exit(f"{f}: {raw.size} bytes is not a whole number of {RECORD}-byte records")
        parts.append(raw.reshape(-1, RECORD))
    return np.concatenate(parts)


def pack(args) -> None:
    from PIL import Image

    from spikeforge.data.split import stratified_split
    from spikeforge.experiments.common import VAL_SPLIT_SEED

    rec = _batches(Path(args.data_dir))
    held = np.zeros(len(rec), dtype=bool)
    if args.val_split:
        _, val_idx = stratified_split(torch.from_numpy(rec[:, 0].astype(np.int64)), args.val_split,
                                      seed=VAL_SPLIT_SEED)
        held[val_idx.numpy()] = True
    keep = ~held
    if args.train_keep is not None:  # carry only the first N training images (in file order)
        if args.train_keep < 1:
            sys.exit(f"--train-keep must be >= 1, got {args.train_keep}")
        keep &= np.cumsum(~held) <= args.train_keep
    blobs = []
    for r in rec[keep]:
        b = io.BytesIO()
        Image.fromarray(r[1:].reshape(3, 32, 32).transpose(1, 2, 0)).save(b, "JPEG", quality=75, subsampling=2)
        blobs.append(b.getvalue())
    exact = lzma.compress(rec[held].tobytes(), format=lzma.FORMAT_RAW, filters=FILTERS)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write((MAGIC if keep.sum() == (~held).sum() else MAGIC_SUBSET)
                + struct.pack("<III", len(rec), len(blobs), len(exact)))
        f.write(np.packbits(held).tobytes())
        if keep.sum() != (~held).sum():
            f.write(np.packbits(keep).tobytes())
            f.write(rec[:, 0].tobytes())  # every label: the held-out split is drawn from all of them
        f.write(rec[keep, 0].tobytes())
        f.write(np.array([len(b) for b in blobs], dtype=np.uint32).tobytes())
        f.write(exact)
        for b in blobs:
            f.write(b)
    tmp.replace(out)
    print(f"{out}: {int(held.sum() + keep.sum())} of {len(rec)} images ({int(held.sum())} exact), "
          f"{out.stat().st_size / 2**20:.1f} MiB")


def unpack(args) -> None:
    try:
        _unpack(args)
    except (struct.error, lzma.LZMAError, ValueError, OSError) as exc:
        sys.exit(f"{args.src}: truncated or corrupt ({exc})")


def read_pack(src) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(records, held, present)`` of a packed file: all ``[n, 3073]`` records in the
    official layout, the held-out mask and the mask of records the file carries (a pack
    made with ``--train-keep`` leaves training images out; their records hold only the label)."""
    from PIL import Image

    data = Path(src).read_bytes()
    subset = data.startswith(MAGIC_SUBSET)
    if not (subset or data.startswith(MAGIC)):
        raise ValueError("not a file written by 'pack'")
    pos = len(MAGIC)
    n, n_jpeg, n_exact = struct.unpack_from("<III", data, pos)
    pos += 12
    held = np.unpackbits(np.frombuffer(data, np.uint8, (n + 7) // 8, pos))[:n].astype(bool)
    pos += (n + 7) // 8
    keep = ~held
    if subset:
        keep = np.unpackbits(np.frombuffer(data, np.uint8, (n + 7) // 8, pos))[:n].astype(bool)
        pos += (n + 7) // 8
        if int(keep.sum()) != n_jpeg or (keep & held).any():
            raise ValueError("the masks of held-out and carried images disagree")
        all_labels = np.frombuffer(data, np.uint8, n, pos)
        pos += n
    labels = np.frombuffer(data, np.uint8, n_jpeg, pos)
    pos += n_jpeg
    sizes = np.frombuffer(data, np.uint32, n_jpeg, pos)
    pos += 4 * n_jpeg
    rec = np.zeros((n, RECORD), dtype=np.uint8)
    if subset:
        rec[:, 0] = all_labels
    rec[held] = np.frombuffer(lzma.decompress(data[pos:pos + n_exact], format=lzma.FORMAT_RAW, filters=FILTERS),
                              np.uint8).reshape(-1, RECORD)
    pos += n_exact
    jpeg = np.empty((n_jpeg, RECORD), dtype=np.uint8)
    jpeg[:, 0] = labels
    for i, s in enumerate(sizes):
        img = np.asarray(Image.open(io.BytesIO(data[pos:pos + int(s)])).convert("RGB"))
        jpeg[i, 1:] = img.transpose(2, 0, 1).reshape(-1)
        pos += int(s)
    rec[keep] = jpeg
    return rec, held, held | keep


def _unpack(args) -> None:
    try:
        rec, held, present = read_pack(args.src)
    except ValueError as exc:
        sys.exit(f"{args.src}: {exc}")
    if not present.all():
        sys.exit(f"{args.src}: carries {int(present.sum())} of {len(rec)} images (packed with --train-keep); "
                 "read it with read_pack() (cifar_methods.py --data-pack), not as a whole data set")
    n = len(rec)
    out = Path(args.out) / "cifar-10-batches-bin"
    out.mkdir(parents=True, exist_ok=True)
    per = n // 5
    for i in range(5):
        rec[i * per:(i + 1) * per].tofile(out / f"data_batch_{i + 1}.bin")
    (out / "batches.meta.txt").write_text(
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
    print(f"{out}: {n} images in 5 batch files")


def export(args) -> None:
    payload = torch.load(Path(args.run) / "model.pt", map_location="cpu", weights_only=True)
    small = {}
    for k, v in payload["model"].items():
        if v.is_floating_point() and v.numel() > 4096:
            if float(v.abs().max()) >= 6e4:
                sys.exit(f"{k}: values too large for float16")
            small[k] = v.half()
        else:
            small[k] = v
    payload = dict(payload, model=small)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data), PART):
        (out / f"part{i // PART:02d}").write_bytes(data[i:i + PART])
    print(f"{args.run}/model.pt -> {out}: {len(data) / 2**20:.1f} MiB in {(len(data) + PART - 1) // PART} parts")


def import_(args) -> None:
    from spikeforge.train import save_checkpoint

    parts = sorted(Path(args.parts).glob("part*"))
    if not parts:
        sys.exit(f"{args.parts}: no part files")
    payload = torch.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)), map_location="cpu", weights_only=True)
    payload["model"] = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in payload["model"].items()}
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run / "model.pt", payload)
    print(f"{run}/model.pt written from {len(parts)} parts")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--val-split", type=int, default=10000, help="these held-out images travel exactly (0: none)")
    p.add_argument("--train-keep", type=int, default=None,
                   help="carry only the first N training images (default: all), to leave room for a model")
    p.add_argument("--out", required=True)
    p = sub.add_parser("unpack")
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("export")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("import")
    p.add_argument("--parts", required=True)
    p.add_argument("--run", required=True)
    args = ap.parse_args()
    {"pack": pack, "unpack": unpack, "export": export, "import": import_}[args.cmd](args)


if __name__ == "__main__":
    main()
