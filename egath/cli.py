"""`egath`: each stage of the workflow as a command, for use without Snakemake.

    egath synthetic resources/demo
    egath pairs resources/demo/manifest.tsv results/demo/pairs.h5 --dataset demo --bow-dim 200 \
        --n-query 200 --n-train 1000 --split-seed 0
    egath features results/demo/pairs.h5 results/demo/features.h5 --model egath-tiny-vit --pretrained none
    egath graph results/demo/pairs.h5 results/demo/features.h5 results/demo/graph.h5 --threshold 0.3
    egath train results/demo/pairs.h5 results/demo/features.h5 results/demo/graph.h5 model.pt --bits 32 \
        --param epochs=30 --param lr=1e-3
    egath encode model.pt results/demo/pairs.h5 results/demo/features.h5 codes.h5
    egath evaluate codes.h5 metrics.json
    egath index model.pt index.h5 --collection results/demo/pairs.h5 --features results/demo/features.h5
    egath search index.h5 --text "red circle" --k 10
"""
from __future__ import annotations

import argparse
import json

from egath.logs import setup_logging


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, booleans
    except json.JSONDecodeError:
        return key, value


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

    p = sub.add_parser("features", help="pairs.h5 -> CLIP features HDF5")
    p.add_argument("pairs")
    p.add_argument("out")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="openai")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("graph", help="pairs.h5 + label-name embeddings -> graph.h5")
    p.add_argument("pairs")
    p.add_argument("embeddings", help="a features file (CLIP label embeddings) or a GloVe text file")
    p.add_argument("out")
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--glove", action="store_true", help="embeddings is a GloVe text file")

    p = sub.add_parser("train", help="train one model")
    p.add_argument("pairs")
    p.add_argument("features")
    p.add_argument("graph")
    p.add_argument("out")
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--method", default="egath")
    p.add_argument("--param", type=_param, action="append", default=[],
                   help="training parameter KEY=VALUE (egath.training.TrainConfig), repeatable")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("encode", help="model.pt -> codes.h5")
    p.add_argument("model")
    p.add_argument("pairs")
    p.add_argument("features")
    p.add_argument("out")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("evaluate", help="codes.h5 -> metrics.json")
    p.add_argument("codes")
    p.add_argument("out")

    p = sub.add_parser("index", help="model.pt + a collection -> a search index")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--collection", required=True,
                   help="a pairs.h5 (its database split is indexed) or a manifest.tsv of images and texts")
    p.add_argument("--features", required=True,
                   help="the features file the model was trained on (names the CLIP encoder)")
    p.add_argument("--pairs", help="the pairs.h5 the model was trained on (its vocabulary); "
                                   "default: the collection, when it is a pairs.h5")
    p.add_argument("--labels", help="labels.txt of a manifest (default: beside it)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("search", help="the nearest items of an index to a text or an image")
    p.add_argument("index")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--same-modality", action="store_true",
                   help="rank the query's own modality (texts for a text) instead of the other")
    p.add_argument("--model", help="the model file (default: the one the index records)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--device", default="cpu")

    args = parser.parse_args(argv)
    setup_logging()
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
                         args.num_workers, select_device(args.device))
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
        train(args.pairs, args.features, args.graph, args.out, args.method, args.bits,
              dict(args.param), device=select_device(args.device))
    elif args.command == "encode":
        from egath.devices import select_device
        from egath.encoding import encode_dataset
        encode_dataset(args.model, args.pairs, args.features, args.out, select_device(args.device))
    elif args.command == "evaluate":
        from egath.metrics import write_metrics
        write_metrics(args.codes, args.out, protocol={})
    elif args.command in ("index", "search"):
        try:
            _index_or_search(args)
        except (ValueError, OSError, KeyError) as e:  # bad input: the message names it
            parser.exit(1, f"egath {args.command}: {e}\n")


def _index_or_search(args) -> None:
    from egath.search import build_index, search
    if args.command == "index":
        from egath.devices import select_device
        manifest = None if args.collection.endswith(".h5") else args.collection
        if manifest is not None and args.pairs is None:
            raise FileNotFoundError("a manifest collection needs --pairs, the pairs.h5 the model was "
                                    "trained on (its vocabulary)")
        build_index(args.model, args.out, pairs=args.pairs or args.collection, features=args.features,
                    manifest=manifest, labels=args.labels, device=select_device(args.device),
                    batch_size=args.batch_size, num_workers=args.num_workers)
        return
    result = search(args.index, text=args.text, image=args.image, k=args.k,
                    same_modality=args.same_modality, model=args.model, device=args.device)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    query = f"text {args.text!r}" if args.text is not None else f"image {args.image}"
    print(f"{query}: the {len(result.hits)} nearest {result.searched}s of {result.n} "
          f"(Hamming distance over {result.bits} bits)")
    if result.unknown_words:
        print(f"(not in the vocabulary, ignored: {' '.join(result.unknown_words)})")
    print(f"rank  dist  id  {result.searched}")
    for hit in result.hits:
        shown = hit.image if result.searched == "image" else hit.text
        print(f"{hit.rank:4d}  {hit.distance:3d}  {hit.id}  {shown}")


if __name__ == "__main__":
    main()
