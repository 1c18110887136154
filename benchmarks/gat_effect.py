"""Does EGATH's GAT classifier reach the codes? Two measurements on a prepared dataset.

1. Gradient shares. EGATH trains with the given settings; at a few epochs, on the same fixed
   training batches, each loss term's weighted gradient on the shared layers (the image and text
   branches, which feed both the hash layers and the GAT classifier) is taken apart, and its
   norm's share of the sum of the terms' norms is printed, for GCDH's summed terms
   (loss_reduction sum) and for per-sample terms (mean).
2. egath - egath-g against the classification weight eta: EGATH at eta = 0, GCDH's 1 and the
   weights that give the BCE about 1 %, 10 % and 30 % of the gradient (read off measurement 1),
   and egath-g, each over several seeds; the validation mAP (order-free, mean of I->T and T->I,
   on training pairs held out) of each, and egath - egath-g with its standard deviation.

    python benchmarks/gat_effect.py results/synthetic/pairs.h5 \\
        results/synthetic/features/egath-tiny-vit_none.h5 results/synthetic/graph.h5
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egath.training import (prepare_run, run_epochs, select_weights, start_training,  # noqa: E402
                            validation_map)

# the demo's widths and schedule (configs/demo.yaml), 32 bits, 100 pairs held out
PARAMS = dict(epochs=30, lr=1e-3, lr_min=1e-4, d_model=128, ff_dim=256, feature_dim=128, gat_hidden=128,
              n_validation=100)
TERMS = ("triplet", "quantization", "classification")
TARGET_SHARES = (0.01, 0.1, 0.3)


def shared_parameters(model) -> list[torch.nn.Parameter]:
    return [*model.image_encoder.parameters(), *model.text_encoder.parameters()]


def gradient_shares(run, state, batches) -> dict[str, float]:
    """Each weighted term's gradient norm on the shared layers over `batches`, as a share of the
    sum of the terms' norms."""
    cfg, model = run.cfg, state.model
    weights = {"triplet": cfg.triplet_weight, "quantization": cfg.quantization_weight,
               "classification": cfg.classification_weight}
    params = shared_parameters(model)
    norms = {t: 0.0 for t in TERMS}
    model.eval()  # no dropout: the same network for every term
    for batch in batches:
        out = model(run.data.image[batch], run.data.text[batch])
        terms = state.objective.loss(out, run.data.labels[batch], batch)
        for t in TERMS:
            grads = torch.autograd.grad(weights[t] * terms[t], params, retain_graph=True, allow_unused=True)
            norms[t] += torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)).item()
    model.train()
    total = sum(norms.values())
    return {t: norms[t] / total for t in TERMS}


def measure_shares(files, bits, params, at_epochs) -> dict[int, dict[str, float]]:
    run = prepare_run(*files, "egath", bits, params)
    batches = torch.randperm(len(run.data.labels), generator=torch.Generator().manual_seed(0))[:256].split(64)
    state = start_training(run)
    shares = {0: gradient_shares(run, state, batches)}

    def after_epoch(state):
        if state.epoch in at_epochs:
            shares[state.epoch] = gradient_shares(run, state, batches)

    run_epochs(run, state, after_epoch)
    return shares


def validation_score(files, method, bits, params) -> float:
    run = prepare_run(*files, method, bits, params)
    state = start_training(run)
    run_epochs(run, state)
    select_weights(run, state)
    return validation_map(state.model, run.validation, run.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs")
    parser.add_argument("features")
    parser.add_argument("graph")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=PARAMS["epochs"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--reduction", default="mean", help="loss_reduction of measurement 2")
    parser.add_argument("--triplet-weight", type=float, default=None,
                        help="alpha of both measurements (default: EGATH's for each reduction)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = (args.pairs, args.features, args.graph)
    base = {**PARAMS, "epochs": args.epochs}
    if args.triplet_weight is not None:
        base["triplet_weight"] = args.triplet_weight
    at = sorted({1, max(1, args.epochs // 3), args.epochs})

    print(f"1. share of the shared layers' gradient norm per term, eta = 1 ({args.bits} bits, "
          f"epochs {args.epochs}, 4 batches of 64)")
    print("reduction  epoch  " + "  ".join(f"{t:>14s}" for t in TERMS))
    classification_at_one = {}
    for reduction in ("sum", "mean"):
        shares = measure_shares(files, args.bits, {**base, "loss_reduction": reduction, "classification_weight": 1.0}, at)
        for epoch, s in shares.items():
            print(f"{reduction:9s}  {epoch:5d}  " + "  ".join(f"{s[t]:14.3g}" for t in TERMS))
        classification_at_one[reduction] = statistics.mean(s["classification"] for s in shares.values())

    # the BCE's share at weight eta is about eta c / (eta c + 1 - c), c its share at weight 1
    c = classification_at_one[args.reduction]
    etas = [0.0, 1.0] + [s * (1 - c) / ((1 - s) * c) for s in TARGET_SHARES]
    params = {**base, "loss_reduction": args.reduction}
    seeds = range(args.seeds)
    print(f"\n2. validation mAP over {args.seeds} seeds, loss_reduction {args.reduction} "
          f"(BCE share at eta = 1: {c:.3g})")
    without = [validation_score(files, "egath-g", args.bits, {**params, "seed": s}) for s in seeds]
    print(f"egath-g              {statistics.mean(without):.4f} ± {statistics.stdev(without):.4f}")
    print("eta          share  egath             egath - egath-g (per seed)")
    for eta in etas:
        scores = [validation_score(files, "egath", args.bits, {**params, "classification_weight": eta, "seed": s})
                  for s in seeds]
        diff = [a - b for a, b in zip(scores, without)]
        share = eta * c / (eta * c + 1 - c) if eta else 0.0
        print(f"{eta:10.4g}  {share:6.3f}  {statistics.mean(scores):.4f} ± {statistics.stdev(scores):.4f}  "
              f"{statistics.mean(diff):+.4f} ± {statistics.stdev(diff):.4f}")


if __name__ == "__main__":
    main()
