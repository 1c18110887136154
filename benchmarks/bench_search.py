"""Time per query of `egath.search.search` on a collection of 200,000 codes x 64 bits, one thread.

    python benchmarks/bench_search.py                  # 200,000 items, 64 bits, k = 10
    python benchmarks/bench_search.py --n 1000000 --k 100

A real index is built first: the synthetic dataset (400 pairs), features from the tiny
random-weights CLIP (egath-tiny-vit), EGATH at the paper's widths trained for one epoch. Its
collection is then enlarged in memory to --n items with uniformly random codes (the ranking
cost does not depend on the codes' values). Timed, after one untimed query that loads the
models (and compiles the ranking kernel): the Hamming top-k alone (egath.hamming.hamming_topk),
and whole text and image queries through `search` (tokenizer and bag-of-words or CLIP image
encoder, the hashing model, the ranking, the hits).
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_name] = "1"  # one thread, before numpy, torch or numba start theirs

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egath.datasets import build_pairs, make_synthetic_dataset  # noqa: E402
from egath.features import extract_features  # noqa: E402
from egath.graph import build_graph, clip_label_embeddings  # noqa: E402
from egath.hamming import hamming_topk, pack_codes  # noqa: E402
from egath.search import build_index, load_index, search  # noqa: E402
from egath.training import train  # noqa: E402


def build_small_index(root: Path, bits: int) -> Path:
    make_synthetic_dataset(root / "data", 400, 0, 64)
    build_pairs(root / "data" / "manifest.tsv", root / "pairs.h5", "bench", 200, 50, 200, 0)
    extract_features(root / "pairs.h5", root / "features.h5", "egath-tiny-vit", None, 128, 0, "cpu",
                     progress=False)
    build_graph(root / "pairs.h5", root / "graph.h5", 0.3, *clip_label_embeddings(root / "features.h5"))
    train(root / "pairs.h5", root / "features.h5", root / "graph.h5", root / "model.pt", "egath", bits,
          {"epochs": 1})  # the paper's widths; one epoch, as the weights do not change the cost
    return build_index(root / "model.pt", root / "index.h5", pairs=root / "pairs.h5",
                       features=root / "features.h5")


def enlarge(index, n: int, seed: int):
    """The index with n items: random codes, the real items' strings and labels repeated."""
    rng = np.random.default_rng(seed)
    bits = int(index.meta["bits"])
    repeat = np.arange(n) % len(index)
    codes = {m: pack_codes(rng.integers(0, 2, (n, bits), dtype=np.uint8)) for m in ("image", "text")}
    return dataclasses.replace(
        index, ids=[f"{index.ids[i]}#{j}" for j, i in enumerate(repeat)],
        image_paths=[index.image_paths[i] for i in repeat], texts=[index.texts[i] for i in repeat],
        labels=index.labels[repeat], codes=codes, _encoders={})


def per_query_ms(run, queries) -> tuple[float, float]:
    """Wall-clock and CPU milliseconds per query (CPU time is what the query costs when other
    processes share the cores)."""
    run(queries[0])  # loads models, compiles kernels: not timed
    wall, cpu = time.perf_counter(), time.process_time()
    for q in queries:
        run(q)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return 1000 * wall / len(queries), 1000 * cpu / len(queries)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        small = load_index(build_small_index(Path(tmp), args.bits))
        index = enlarge(small, args.n, args.seed)
        rng = np.random.default_rng(args.seed + 1)
        codes = rng.integers(0, 2, (args.queries, args.bits), dtype=np.uint8)
        database = index.codes["image"]
        topk = per_query_ms(lambda q: hamming_topk(q[None], database, args.k, threads=1), codes)
        words = [w for w in small.vocabulary if w.isalpha()]
        texts = [" ".join(rng.choice(words, 3)) for _ in range(args.queries)]
        text = per_query_ms(lambda t: search(index, text=t, k=args.k), texts)
        images = small.image_paths[:args.queries]
        image = per_query_ms(lambda p: search(index, image=p, k=args.k), images)

    print(f"collection: {args.n:,} items x {args.bits} bits, k = {args.k}, one thread, "
          f"{args.queries} queries, model loading excluded")
    for what, (wall, cpu) in (
            ("Hamming top-k alone (egath.hamming.hamming_topk)", topk),
            ("text query through search() (bag-of-words, EGATH text encoder at the paper's widths, "
             "ranking, hits)", text),
            ("image query through search() (egath-tiny-vit image encoder, EGATH image encoder, "
             "ranking, hits)", image)):
        print(f"{what}: {wall:.2f} ms per query ({cpu:.2f} ms CPU)")

if __name__ == "__main__":
    main()
