"""Search speed, one thread: per query in-process, per HTTP request to `egath serve`, and per
`egath search` command.

    python benchmarks/bench_search.py                                   # all three, default sizes
    python benchmarks/bench_search.py --command-index index.h5          # the command on another index
    python benchmarks/bench_search.py --n 1000000 --http-sizes 1000000 --k 100

A real index is built first: the synthetic dataset (400 pairs), features from the tiny
random-weights CLIP (egath-tiny-vit), EGATH at the paper's widths trained for one epoch. Its
collection is then enlarged to the sizes measured with uniformly random codes (the ranking cost
does not depend on the codes' values) and the real items' strings repeated.

1. In-process (`--n` items), after one untimed query that loads the encoders (and compiles the
   ranking kernel): the Hamming top-k alone (egath.hamming.hamming_topk), and whole text and
   image queries through `search`.
2. HTTP (each of `--http-sizes`): the enlarged index is written to a file and served by
   `egath serve` in a subprocess; text queries of three vocabulary words are sent one after
   another over one kept-alive connection, each timed from the request's start to the last
   byte of its JSON answer (k hits). Five untimed queries first. Also: the server's start-up,
   index loading included.
3. The command: the wall time of `egath search INDEX --text ...` (a new process each time: torch
   imported, the index and its text encoder loaded, one query answered), median of `--command-runs`.

Every process runs with one thread (OMP, MKL, OpenBLAS and numba thread counts set to 1).
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_name] = "1"  # one thread, before numpy, torch or numba start theirs, in this process and its children

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import http.client  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from egath.datasets import build_pairs, make_synthetic_dataset  # noqa: E402
from egath.features import extract_features  # noqa: E402
from egath.graph import build_graph, clip_label_embeddings  # noqa: E402
from egath.hamming import hamming_topk, pack_codes  # noqa: E402
from egath.search import build_index, load_index, search, write_index  # noqa: E402
from egath.training import train  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


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


def enlarged(index, n: int, seed: int) -> tuple[dict, dict]:
    """The collection of `index` repeated to n items (ids made unique) and random codes (n, bits)."""
    rng = np.random.default_rng(seed)
    repeat = np.arange(n) % len(index)
    items = dict(ids=[f"{index.ids[i]}#{j}" for j, i in enumerate(repeat)],
                 image_paths=[index.image_paths[i] for i in repeat], texts=[index.texts[i] for i in repeat],
                 labels=index.labels[repeat])
    codes = {m: rng.integers(0, 2, (n, int(index.meta["bits"])), dtype=np.uint8) for m in index.modalities}
    return items, codes


def per_query_ms(run, queries) -> tuple[float, float]:
    """Wall-clock and CPU milliseconds per query (CPU time is what the query costs when other
    processes share the cores)."""
    run(queries[0])  # loads the encoders, compiles kernels: not timed
    wall, cpu = time.perf_counter(), time.process_time()
    for q in queries:
        run(q)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return 1000 * wall / len(queries), 1000 * cpu / len(queries)


def in_process(small, args, texts) -> None:
    items, codes = enlarged(small, args.n, args.seed)
    index = dataclasses.replace(small, **items, codes={m: pack_codes(c) for m, c in codes.items()},
                                _queries={}, _checked_models=set())
    rng = np.random.default_rng(args.seed + 1)
    queries = rng.integers(0, 2, (args.queries, args.bits), dtype=np.uint8)
    database = index.codes["image"]
    results = {
        "Hamming top-k alone (egath.hamming.hamming_topk)":
            per_query_ms(lambda q: hamming_topk(q[None], database, args.k, threads=1), queries),
        "text query through search() (bag-of-words, EGATH text encoder at the paper's widths, ranking, hits)":
            per_query_ms(lambda t: search(index, text=t, k=args.k), texts),
        "image query through search() (egath-tiny-vit image encoder, EGATH image encoder, ranking, hits)":
            per_query_ms(lambda p: search(index, image=p, k=args.k), small.image_paths[:args.queries]),
    }
    print(f"\nin-process: {args.n:,} items x {args.bits} bits, k = {args.k}, {args.queries} queries, "
          "encoder loading excluded")
    for what, (wall, cpu) in results.items():
        print(f"  {what}: {wall:.2f} ms per query ({cpu:.2f} ms CPU)")


def over_http(small, n: int, args, texts, folder: Path) -> None:
    path = folder / f"index-{n}.h5"
    items, codes = enlarged(small, n, args.seed)
    write_index(path, small.meta, **items, label_names=small.label_names, vocabulary=small.vocabulary,
                codes=codes, encoders=small.encoders)
    del items, codes
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "egath.cli", "serve", str(path), "--port", "0",
                               "--k", str(args.k)], stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in server.stderr:
            found = re.search(r"at http://([\d.]+):(\d+)/", line)
            if found:
                break
        else:
            raise RuntimeError(f"egath serve {path} did not start")
        start_up = time.perf_counter() - started
        connection = http.client.HTTPConnection(found.group(1), int(found.group(2)), timeout=60)

        def ask(text: str) -> float:
            start = time.perf_counter()
            connection.request("GET", "/api/search?" + urllib.parse.urlencode({"text": text, "k": args.k}))
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - start
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {body[:200]!r}")
            return 1000 * elapsed

        for text in texts[:5]:
            ask(text)
        used = _process_cpu(server.pid)
        times = [ask(text) for text in texts[:args.http_queries]]
        server_cpu = 1000 * (_process_cpu(server.pid) - used) / len(times)
        connection.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    p50, p95 = np.percentile(times, [50, 95])
    print(f"  {n:>9,} items: p50 {p50:.2f} ms, p95 {p95:.2f} ms over {len(times)} text queries "
          f"(k = {args.k}), the server's CPU {server_cpu:.2f} ms a query; server start-up with index "
          f"loading {start_up:.1f} s")


def command_wall(index: Path, runs: int, word: str) -> None:
    command = [sys.executable, "-m", "egath.cli", "search", str(index), "--text", word, "--k", "10"]
    times, cpu = [], []
    for _ in range(runs):
        start, used = time.perf_counter(), _children_cpu()
        subprocess.run(command, check=True, capture_output=True, env=ENV)
        times.append(time.perf_counter() - start)
        cpu.append(_children_cpu() - used)
    print(f"\none command, `egath search {index} --text {word!r} --k 10`, {runs} runs: median "
          f"{statistics.median(times):.2f} s wall (min {min(times):.2f} s, max {max(times):.2f} s), "
          f"median {statistics.median(cpu):.2f} s CPU")


def _children_cpu() -> float:
    """CPU seconds (user and system) of the finished child processes: what a command costs
    whatever else shares the cores."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    """CPU seconds (user and system) of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="collection size of the in-process timing")
    parser.add_argument("--http-sizes", default="200000,1000000", help="collection sizes served over HTTP")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200, help="in-process queries of each kind")
    parser.add_argument("--http-queries", type=int, default=300)
    parser.add_argument("--command-runs", type=int, default=7)
    parser.add_argument("--command-index", type=Path, help="the index of the command's timing "
                                                           "(default: the benchmark's own small index)")
    parser.add_argument("--command-text", default="circle")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        small = load_index(build_small_index(Path(tmp), args.bits))
        rng = np.random.default_rng(args.seed + 1)
        words = [w for w in small.vocabulary if w.isalpha()]
        texts = [" ".join(rng.choice(words, 3)) for _ in range(max(args.queries, args.http_queries + 5))]
        in_process(small, args, texts[:args.queries])
        print(f"\nover HTTP: `egath serve`, one kept-alive connection, {args.bits} bits")
        for n in (int(size) for size in args.http_sizes.split(",") if size):
            over_http(small, n, args, texts, Path(tmp))
        command_wall(args.command_index or small.path, args.command_runs, args.command_text)


if __name__ == "__main__":
    main()
