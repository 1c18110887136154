"""Does EGATH's discrete code update settle, and does its pull towards decorrelated codes act?

EGATH trains on a prepared dataset with each update variant (relative, the default; penalty;
gcdh, GCDH's algebra) and triplet weight alpha, holding out validation pairs. Per run it prints,
every 10 epochs, the quantization term, the share of B's bits that flipped and the validation
mAP; then the summary the README quotes:
- the bits' balance (mean over bits of |mean of the bit over the training codes B|: 0 when every
  bit splits the samples in half) and their mutual correlation (mean |correlation| between two
  bits of B) at the end of training;
- the share of B's bits the C term decides at the end (those whose sign differs from that of the
  data term L R + mu (H_I + H_T) alone);
- the mean validation mAP of the last 20 epochs against the best 20-epoch window.

    python benchmarks/code_update.py results/synthetic/pairs.h5 \\
        results/synthetic/features/egath-tiny-vit_none.h5 results/synthetic/graph.h5
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egath.methods.egath import update_codes  # noqa: E402
from egath.training import prepare_run, run_epochs, start_training  # noqa: E402

# the paper's schedule (lr 1e-4 decaying to 1e-6, batch 64) at the demo's widths
PARAMS = dict(epochs=100, lr=1e-4, lr_min=1e-6, batch_size=64, d_model=128, ff_dim=256,
              feature_dim=128, gat_hidden=128, n_validation=200)


def code_statistics(codes: torch.Tensor) -> dict[str, float]:
    b = codes.double()
    balance = b.mean(0).abs().mean()
    correlation = torch.corrcoef(b.T).nan_to_num(1.0)
    off_diagonal = correlation[~torch.eye(b.shape[1], dtype=torch.bool)]
    return {"balance": float(balance), "bit correlation": float(off_diagonal.abs().mean())}


def summary(history: list[dict], window: int = 20) -> dict:
    flips = np.array([h["code_flip_rate"] for h in history])
    val = np.array([h["validation_map"] for h in history])
    windows = np.convolve(val, np.ones(window) / window, mode="valid")
    return {"flip rate, last 20": flips[-window:].mean(), "val mAP last 20": windows[-1],
            "best 20-window": windows.max(), "gap": windows.max() - windows[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs")
    parser.add_argument("features")
    parser.add_argument("graph")
    parser.add_argument("--updates", nargs="+", default=["relative", "penalty", "gcdh"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[10.0, 0.3])
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=PARAMS["epochs"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for update, alpha in itertools.product(args.updates, args.alphas):
        params = {**PARAMS, "epochs": args.epochs, "code_update": update, "triplet_weight": alpha,
                  "selection": "last"}
        run = prepare_run(args.pairs, args.features, args.graph, "egath", args.bits, params)
        state = start_training(run)
        objective, cfg = state.objective, run.cfg
        decided = []  # per epoch: the share of B's bits whose sign the data term alone would not give
        real_end_epoch = objective.end_epoch

        def end_epoch(h_image, h_text):
            before = objective.state
            stats = real_end_epoch(h_image, h_text)
            alone = update_codes(before, objective.labels, h_image, h_text, cfg.code_lambda, cfg.code_mu,
                                 cfg.code_rho, "relative", pull=0.0)
            decided.append(float((alone.codes != objective.state.codes).float().mean()))
            return stats

        objective.end_epoch = end_epoch
        run_epochs(run, state)
        history = state.history
        print(f"\n== code_update={update} alpha={alpha}")
        for h in history[::10] + [history[-1]]:
            print(f"epoch {h['epoch']:3d}  quantization {h['quantization']:8.4f}  "
                  f"flips {h['code_flip_rate']:.4f}  validation mAP {h['validation_map']:.4f}")
        stats = {**code_statistics(objective.state.codes), "decided by C": decided[-1], **summary(history)}
        rows.append((update, alpha, stats))
    print("\nupdate    alpha  " + "  ".join(f"{k:>18s}" for k in rows[0][2]))
    for update, alpha, s in rows:
        print(f"{update:9s} {alpha:5.1f}  " + "  ".join(f"{v:18.4f}" for v in s.values()))


if __name__ == "__main__":
    main()
