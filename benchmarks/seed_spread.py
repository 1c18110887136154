"""How much does one cell's mAP depend on the training seed, with the last epoch's weights and
with the weights averaged over the last epochs (selection: average, the default)?

For each method and seed, one training on a prepared dataset gives both: the last epoch's
weights, then the average of the last `average_window` of the epochs (egath.training.select_weights).
Each is evaluated as the workflow does (query against database, order-free mAP, I->T and T->I),
and the spread (max - min) over the seeds is printed per method and selection. With
--figure, the per-epoch validation mAP of every seed is drawn, so a collapse shows.

    python benchmarks/seed_spread.py results/synthetic/pairs.h5 \\
        results/synthetic/features/egath-tiny-vit_none.h5 results/synthetic/graph.h5 \\
        --figure seed_spread.png
    # the settings before weight averaging, standardised inputs, per-sample terms and the relative update:
    python benchmarks/seed_spread.py ... --inputs none --set code_update=penalty loss_reduction=sum
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import yaml
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egath.encoding import encode_codes  # noqa: E402
from egath.metrics import mean_average_precision  # noqa: E402
from egath.training import load_split, prepare_run, run_epochs, select_weights, start_training  # noqa: E402

# the demo's settings (configs/demo.yaml) at 32 bits
PARAMS = dict(epochs=15, lr=1e-3, lr_min=1e-4, d_model=128, ff_dim=256, feature_dim=128, gat_hidden=128,
              n_validation=100)


def test_map(run, model, splits) -> dict[str, float]:
    """Order-free mAP of the query set against the database, as the workflow's metrics."""
    model.eval()
    codes = {name: {m: encode_codes(encode, x, 1024, run.device) for m, encode, x in (
        ("image", model.encode_image, run.transform.image_input(data.image)),
        ("text", model.encode_text, run.transform.text_input(data.text)))} for name, data in splits.items()}
    labels = {name: data.labels.numpy() for name, data in splits.items()}
    return {"i2t": mean_average_precision(codes["query"]["image"], codes["database"]["text"], labels["query"],
                                          labels["database"]),
            "t2i": mean_average_precision(codes["query"]["text"], codes["database"]["image"], labels["query"],
                                          labels["database"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs")
    parser.add_argument("features")
    parser.add_argument("graph")
    parser.add_argument("--methods", nargs="+", default=["egath", "egath-g"])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=PARAMS["epochs"])
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="training settings over the demo's, e.g. code_update=penalty loss_reduction=sum")
    parser.add_argument("--inputs", help="input form of both modalities instead of each method's (none, centre, standardise)")
    parser.add_argument("--figure", help="draw the per-epoch validation mAP of every seed into this PNG")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = {name: load_split(args.pairs, args.features, name) for name in ("query", "database")}
    settings = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    spec = {"inputs": {"image": args.inputs, "text": args.inputs}} if args.inputs else None
    results, curves = {}, {}
    for method in args.methods:
        for seed in range(args.seeds):
            run = prepare_run(args.pairs, args.features, args.graph, method, args.bits,
                              {**PARAMS, **settings, "epochs": args.epochs, "seed": seed}, spec)
            state = start_training(run)
            run_epochs(run, state)
            last = test_map(run, state.model, splits)
            selection = select_weights(run, state)
            averaged = test_map(run, state.model, splits)
            for name, value in (("last epoch", last), ("average", averaged)):
                results.setdefault((method, name), []).append(value)
            curves.setdefault(method, []).append([h["validation_map"] for h in state.history])
            print(f"{method} seed {seed}: last epoch i2t {last['i2t']:.4f} t2i {last['t2i']:.4f}; "
                  f"{selection}: i2t {averaged['i2t']:.4f} t2i {averaged['t2i']:.4f}", flush=True)
    print(f"\n{args.seeds} seeds, {args.bits} bits, {args.epochs} epochs; test mAP (order-free), query against database")
    print("method     selection    task  mean     std      min      max      spread")
    for (method, name), values in results.items():
        for task in ("i2t", "t2i"):
            v = [x[task] for x in values]
            print(f"{method:10s} {name:12s} {task}   {statistics.mean(v):.4f}  {statistics.stdev(v):.4f}  "
                  f"{min(v):.4f}  {max(v):.4f}  {max(v) - min(v):.4f}")
    if args.figure:
        fig = Figure(figsize=(5 * len(curves), 3.5), layout="constrained")
        for ax, (method, runs) in zip(fig.subplots(1, len(curves), squeeze=False)[0], curves.items()):
            for seed, values in enumerate(runs):
                ax.plot(range(1, len(values) + 1), values, label=f"seed {seed}", linewidth=1)
            ax.set(title=method, xlabel="epoch", ylabel="validation mAP")
            ax.grid(True, alpha=0.3)
        fig.axes[-1].legend(fontsize="x-small")
        fig.savefig(args.figure, dpi=120)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
