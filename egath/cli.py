"""`egath`: each stage of the workflow as a command, for use without Snakemake.

    egath synthetic resources/demo
    egath pairs resources/demo/manifest.tsv results/demo/pairs.h5 --dataset demo --bow-dim 200 \
        --n-query 200 --n-train 1000 --split-seed 0
    egath features results/demo/pairs.h5 results/demo/features.h5 --model egath-tiny-vit --pretrained none
    egath graph results/demo/pairs.h5 results/demo/features.h5 results/demo/graph.h5 --threshold 0.3
    egath train results/demo/pairs.h5 results/demo/features.h5 results/demo/graph.h5 model.pt --bits 32 \
        --param epochs=30 --param lr=1e-3
    egath first-stage results/demo/pairs.h5 results/demo/features.h5 first_stage.pt --method twdh --bits 32
    egath train results/demo/pairs.h5 results/demo/features.h5 results/demo/graph.h5 twdh.pt --method twdh \
        --bits 32 --first-stage first_stage.pt
    egath encode model.pt results/demo/pairs.h5 results/demo/features.h5 codes.h5
    egath evaluate codes.h5 metrics.json
    egath index model.pt index.h5 --collection results/demo/pairs.h5 --features results/demo/features.h5
    egath search index.h5 --text "red circle" --k 10
    egath serve index.h5                       # a search page and a JSON API on http://127.0.0.1:8000/
"""
from __future__ import annotations

import argparse
import json
import logging

from egath.logs import setup_logging


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, booleans
    except json.JSONDecodeError:
        return key, value


def _method_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--method", default="egath", help="a method's name (docs/methods.md) or a method file")
    p.add_argument("--text", default="bow", help="the text input: bow (the bag-of-words) or clip")
    p.add_argument("--method-param", type=_param, action="append", default=[],
                   help="the method's own hyper-parameter KEY=VALUE (a JSON value), repeatable")
    p.add_argument("--device", default="auto")


def _method_spec(args) -> dict:
    """What the config's `methods.<name>` entry says, from the command line."""
    return {"text": args.text, "params": dict(args.method_param)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="egath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synthetic", help="write the synthetic dataset (images, manifest)")
    p.add_argument("out_dir")
    p.add_argument("--n-pairs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)

    p = sub.add_parser("pairs", help="manifest -> pairs.h5")
    p.add_argument("manifest")
    p.add_argument("out")
    p.add_argument("--dataset", required=True)
    p.add_argument("--bow-dim", type=int, required=True)
    p.add_argument("--n-query", type=int, required=True)
    p.add_argument("--n-train", type=int, required=True)
    p.add_argument("--split-seed", type=int, required=True)
    p.add_argument("--labels", help="labels.txt of the manifest (default: beside it)")
    p.add_argument("--allow-empty-text", action="store_true",
                   help="keep samples whose text has no word, as all-zero bag-of-words rows "
                        "(the preparers' NUS-WIDE manifests have such samples)")

    p = sub.add_parser("features", help="pairs.h5 -> CLIP features HDF5", formatter_class=_Help)
    p.add_argument("pairs", help="the pairs.h5 whose images, texts and label names are encoded")
    p.add_argument("out", help="the features file to write")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    p.add_argument("--pretrained", default="openai",
                   help="open_clip weights tag, a local checkpoint file, or none (random weights)")
    p.add_argument("--batch-size", type=int, default=256, help="images and texts encoded at a time")
    p.add_argument("--num-workers", type=int, default=4, help="processes that read images")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a free GPU, else the CPU)")
    _unreadable_images_option(p)

    p = sub.add_parser("graph", help="pairs.h5 + label-name embeddings -> graph.h5")
    p.add_argument("pairs")
    p.add_argument("embeddings", help="a features file (CLIP label embeddings) or a GloVe text file")
    p.add_argument("out")
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--glove", action="store_true", help="embeddings is a GloVe text file")

    p = sub.add_parser("first-stage", help="the first step of a method that trains in two (TwDH)")
    p.add_argument("pairs")
    p.add_argument("features")
    p.add_argument("out")
    _method_options(p)

    p = sub.add_parser("train", help="train one model")
    p.add_argument("pairs")
    p.add_argument("features")
    p.add_argument("graph")
    p.add_argument("out")
    _method_options(p)
    p.add_argument("--param", type=_param, action="append", default=[],
                   help="training parameter KEY=VALUE (egath.training.TrainConfig), repeatable")
    p.add_argument("--first-stage", help="the method's first_stage.pt (`egath first-stage`), for TwDH")

    p = sub.add_parser("encode", help="model.pt -> codes.h5")
    p.add_argument("model")
    p.add_argument("pairs")
    p.add_argument("features")
    p.add_argument("out")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("evaluate", help="codes.h5 -> metrics.json")
    p.add_argument("codes")
    p.add_argument("out")

    p = sub.add_parser("index", help="model.pt + a collection -> a search index", formatter_class=_Help)
    p.add_argument("model", help="the trained model (model.pt)")
    p.add_argument("out", help="the index file to write")
    p.add_argument("--collection", required=True,
                   help="what to index: a pairs.h5 (its database split), a manifest.tsv of images, texts "
                        "and labels, a folder (every image under it), or a .txt file of captions, one a line")
    p.add_argument("--features", required=True,
                   help="the features file the model was trained on (names the CLIP encoder)")
    p.add_argument("--pairs", help="the pairs.h5 the model was trained on (its vocabulary and lineage); "
                                   "default: the collection, when it is a pairs.h5")
    p.add_argument("--labels", help="labels.txt of a manifest (default: the one beside it)")
    _unreadable_images_option(p)
    p.add_argument("--batch-size", type=int, default=256, help="items encoded at a time")
    p.add_argument("--num-workers", type=int, default=2, help="processes that read images")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a free GPU, else the CPU)")
    _verbose_option(p)

    p = sub.add_parser("search", help="the nearest items of an index to a text or an image",
                       formatter_class=_Help)
    p.add_argument("index", help="an index file made by `egath index`")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query: ranks the images")
    query.add_argument("--image", help="an image file as the query: ranks the texts")
    query.add_argument("--queries", metavar="FILE",
                       help="many queries, one a line: a text, or `text<TAB>words` or `image<TAB>path`; "
                            "answered in one process, as TSV (or JSON with --json)")
    p.add_argument("--k", type=int, default=10, help="how many items to return")
    p.add_argument("--same-modality", action="store_true",
                   help="rank the query's own modality (texts for a text) instead of the other")
    p.add_argument("--model", help="check that this model file is the one the index was built with "
                                   "(the index carries its encoders: no model file is needed to search)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    _verbose_option(p)

    p = sub.add_parser("serve", help="a search page and JSON API over an index", formatter_class=_Help)
    p.add_argument("index", help="an index file made by `egath index`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 opens it to the network: the page has no login)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one)")
    p.add_argument("--k", type=int, default=20, help="results a query returns unless it asks for another number")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload accepted, in MB")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    _verbose_option(p)

    args = parser.parse_args(argv)
    setup_logging()
    if args.command in ("index", "search", "serve"):
        _quiet_libraries(args.verbose, own_level=logging.WARNING if args.command == "search" else logging.INFO)
    if args.command == "synthetic":
        from egath.datasets import make_synthetic_dataset
        print(make_synthetic_dataset(args.out_dir, args.n_pairs, args.seed, args.image_size))
    elif args.command == "pairs":
        from egath.datasets import build_pairs
        build_pairs(args.manifest, args.out, args.dataset, args.bow_dim, args.n_query, args.n_train,
                    args.split_seed, labels_path=args.labels,
                    allow_empty_text=args.allow_empty_text)
    elif args.command == "features":
        from egath.devices import select_device
        from egath.features import extract_features
        extract_features(args.pairs, args.out, args.model, args.pretrained, args.batch_size,
                         args.num_workers, select_device(args.device),
                         unreadable_images=args.unreadable_images)
    elif args.command == "graph":
        from egath.graph import build_graph, clip_label_embeddings, glove_label_embeddings, read_label_names
        if args.glove:
            node_features, source = glove_label_embeddings(args.embeddings, read_label_names(args.pairs))
        else:
            node_features, source = clip_label_embeddings(args.embeddings)
        build_graph(args.pairs, args.out, args.threshold, node_features, source)
    elif args.command == "train":
        from egath.devices import select_device
        from egath.training import train
        train(args.pairs, args.features, args.graph, args.out, args.method, args.bits, dict(args.param),
              device=select_device(args.device), spec=_method_spec(args), first_stage=args.first_stage)
    elif args.command == "first-stage":
        from egath.devices import select_device
        from egath.first_stage import run_first_stage
        run_first_stage(args.pairs, args.features, args.out, args.method, args.bits,
                        spec=_method_spec(args), device=select_device(args.device))
    elif args.command == "encode":
        from egath.devices import select_device
        from egath.encoding import encode_dataset
        encode_dataset(args.model, args.pairs, args.features, args.out, select_device(args.device))
    elif args.command == "evaluate":
        from egath.metrics import write_metrics
        write_metrics(args.codes, args.out, protocol={})
    elif args.command in ("index", "search", "serve"):
        try:
            failed = {"index": _index, "search": _search, "serve": _serve}[args.command](args)
        except (ValueError, OSError, KeyError) as e:  # bad input: the message names it
            parser.exit(1, f"egath {args.command}: {e}\n")
        if failed:
            parser.exit(1)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default."""


def _unreadable_images_option(p) -> None:
    p.add_argument("--unreadable-images", choices=("error", "skip"), default="error",
                   help="an image that cannot be read stops the run naming it (error), or is left "
                        "out, counted and named (skip)")


def _verbose_option(p) -> None:
    p.add_argument("--verbose", action="store_true", help="also show other libraries' log lines")


def _quiet_libraries(verbose: bool, own_level: int) -> None:
    """Log egath's own lines at `own_level` and up, other libraries' (open_clip logs on the root
    logger) only from errors up, unless `verbose`."""
    logging.getLogger().setLevel(logging.INFO if verbose else logging.ERROR)
    logging.getLogger("egath").setLevel(logging.INFO if verbose else own_level)


def _index(args) -> None:
    from egath.collection import collection_kind
    from egath.devices import select_device
    from egath.search import build_index
    if collection_kind(args.collection) != "pairs" and args.pairs is None:
        raise FileNotFoundError("a collection that is not a pairs.h5 needs --pairs, the pairs.h5 the model "
                                "was trained on (its vocabulary)")
    build_index(args.model, args.out, pairs=args.pairs or args.collection, features=args.features,
                collection=args.collection, labels=args.labels, unreadable_images=args.unreadable_images,
                device=select_device(args.device), batch_size=args.batch_size, num_workers=args.num_workers)


def _search(args) -> bool:
    """Answer the query or queries; True where one of several failed (each is named on stderr)."""
    import sys

    from egath.search import SearchError, load_index, search
    index = load_index(args.index)
    options = dict(k=args.k, same_modality=args.same_modality, model=args.model, device=args.device)
    if args.queries is None:
        result = search(index, text=args.text, image=args.image, **options)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        else:
            _print_result(result)
        return False
    results, failed = [], False
    for line, query in _read_queries(args.queries):
        try:
            results.append((line, search(index, **query, **options)))
        except SearchError as e:
            print(f"{args.queries}:{line}: {e}", file=sys.stderr)
            failed = True
    if args.json:
        print(json.dumps([{"line": line, **result.to_dict()} for line, result in results], indent=2,
                         ensure_ascii=False))
    else:
        print("line\tquery\trank\tdistance\tid\titem")
        for line, result in results:
            query = next(iter(result.query.values()))
            for hit in result.hits:
                item = hit.image if result.searched == "image" else hit.text
                print("\t".join(_tsv_field(v) for v in (line, query, hit.rank, hit.distance, hit.id, item)))
    return failed


def _read_queries(path) -> list[tuple[int, dict]]:
    """(line number, query) of each non-blank line of a queries file."""
    from egath.datasets.text import read_lines
    queries = []
    for number, line in enumerate(read_lines(path), start=1):
        kind, tab, value = line.partition("\t")
        if not tab:
            kind, value = "text", line
        if kind not in ("text", "image"):
            raise ValueError(f"{path}:{number}: a line is a text, or `text<TAB>words` or "
                             f"`image<TAB>path`, not {kind!r} before the tab")
        if line.strip():
            queries.append((number, {kind: value}))
    return queries


def _tsv_field(value) -> str:
    return " ".join(str(value).split())  # a tab or newline inside a text would break the row


def _print_result(result) -> None:
    query = result.query
    shown = f"text {query['text']!r}" if "text" in query else f"image {query['image']}"
    print(f"{shown}: the {len(result.hits)} nearest {result.searched}s of {result.n} "
          f"(Hamming distance over {result.bits} bits)")
    if result.unknown_words:
        print(f"(not in the vocabulary, ignored: {' '.join(result.unknown_words)})")
    print(f"rank  dist  id  {result.searched}")
    for hit in result.hits:
        item = hit.image if result.searched == "image" else hit.text
        print(f"{hit.rank:4d}  {hit.distance:3d}  {hit.id}  {item}")


def _serve(args) -> None:
    from egath.serve import serve
    serve(args.index, host=args.host, port=args.port, k=args.k,
          max_upload_bytes=int(args.max_upload_mb * 1e6), device=args.device)


if __name__ == "__main__":
    main()
