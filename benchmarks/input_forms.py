"""What each method's input form does: every method trained on a prepared dataset with its inputs
as cached (none), centred and standardised, with a config's settings for it (its `training:` and
matching `train_overrides`), evaluated as the workflow does (query against database, order-free
mAP, I->T / T->I), mean over seeds.

    python benchmarks/input_forms.py configs/demo.yaml results/synthetic/pairs.h5 \\
        results/synthetic/features/egath-tiny-vit_none.h5 results/synthetic/graph.h5
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_spread import test_map  # noqa: E402

from egath.lineage import pairs_lineage  # noqa: E402
from egath.settings import job_training, method_spec  # noqa: E402
from egath.training import load_split, prepare_run, run_epochs, select_weights, start_training  # noqa: E402

FORMS = ("none", "centre", "standardise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("pairs")
    parser.add_argument("features")
    parser.add_argument("graph")
    parser.add_argument("--methods", nargs="+", help="default: every method of the config but itq")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())
    dataset = pairs_lineage(args.pairs)["dataset"]  # for the overrides that select a dataset
    methods = args.methods or [m for m in config["methods"] if (config["methods"][m] or {}).get("model", m) != "itq"]
    splits = {text: {name: load_split(args.pairs, args.features, name, text) for name in ("query", "database")}
              for text in ("bow", "clip")}
    print(f"test mAP i2t / t2i, mean over {args.seeds} seeds, {args.bits} bits, settings of {args.config}")
    print("method           " + "".join(f"{form:>20s}" for form in FORMS))
    for method in methods:
        params, spec = job_training(config, dataset, method, args.bits), method_spec(config, method)
        cells = []
        for form in FORMS:
            scores = []
            for seed in range(args.seeds):
                run = prepare_run(args.pairs, args.features, args.graph, method, args.bits, {**params, "seed": seed},
                                  spec={**spec, "inputs": {"image": form, "text": form}})
                state = start_training(run)
                try:
                    run_epochs(run, state)
                except FloatingPointError:
                    scores = None
                    break
                select_weights(run, state)
                scores.append(test_map(run, state.model, splits[run.spec.text]))
            cells.append("diverged" if scores is None else
                         f"{statistics.mean(s['i2t'] for s in scores):.3f} / {statistics.mean(s['t2i'] for s in scores):.3f}")
        print(f"{method:16s} " + "".join(f"{c:>20s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
