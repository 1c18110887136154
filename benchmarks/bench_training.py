"""Training throughput (pairs/s) and peak memory of one method on cached features at the
paper's sizes: 10,000 training pairs, 512-d CLIP image features, MIRFlickr's 1,386-word
bag-of-words and 24 labels, paper widths.

    python benchmarks/bench_training.py                 # CPU
    python benchmarks/bench_training.py --device cuda   # GPU

Features are random (the speed does not depend on their values); the files are written to a
temporary folder and the full training entry point (egath.training.train) is timed.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from egath.graph import build_graph
from egath.training import train


def write_inputs(root: Path, n_train: int, image_dim: int, vocabulary: int, n_labels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_train + 100  # a few extra rows for query/database
    labels = (rng.random((n, n_labels)) < 3 / n_labels).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, n_labels, n)] = 1
    text = h5py.string_dtype()
    with h5py.File(root / "pairs.h5", "w") as f:
        f.create_dataset("labels", data=labels)
        f.create_dataset("label_names", data=[f"label{i}" for i in range(n_labels)], dtype=text)
        f.create_dataset("image_paths", data=[f"image{i}.jpg" for i in range(n)], dtype=text)
        f.create_dataset("texts", data=["words"] * n, dtype=text)
        f.create_dataset("bow", data=(rng.random((n, vocabulary)) < 0.01).astype(np.uint8))
        f.create_dataset("split/train", data=np.arange(n_train, dtype=np.int64))
        f.create_dataset("split/query", data=np.arange(n_train, n, dtype=np.int64))
        f.create_dataset("split/database", data=np.arange(n_train, dtype=np.int64))
    with h5py.File(root / "features.h5", "w") as f:
        f.create_dataset("image", data=rng.standard_normal((n, image_dim)).astype(np.float16))
        f.create_dataset("text", data=rng.standard_normal((n, image_dim)).astype(np.float16))
    node_features = rng.standard_normal((n_labels, 300)).astype(np.float32)
    build_graph(root / "pairs.h5", root / "graph.h5", 0.3, node_features, "random (benchmark)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="egath")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_inputs(root, args.n_train, 512, 1386, 24)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = train(root / "pairs.h5", root / "features.h5", root / "graph.h5", root / "model.pt",
                       args.method, args.bits, {"epochs": args.epochs}, device=args.device)
        wall = time.perf_counter() - started
    epoch_seconds = [h["seconds"] for h in result["history"]]
    steady = epoch_seconds[1:] or epoch_seconds  # the first epoch pays for warm-up
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"device: {device}")
    cfg = result["config"]
    print(f"method {args.method}, {args.bits} bits, {args.n_train} training pairs, batch {cfg['batch_size']}, "
          f"feature_dim {cfg['feature_dim']} (its authors' widths)")
    print(f"epoch seconds: {', '.join(f'{s:.2f}' for s in epoch_seconds)} (whole run {wall:.1f} s)")
    print(f"throughput: {args.n_train / np.mean(steady):.0f} training pairs/s (epochs after the first)")
    print(f"peak host memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
