"""The small trained model and index that the search and server tests share: the synthetic
dataset (600 pairs) with the tiny random-weights CLIP, EGATH trained for 25 epochs."""
from __future__ import annotations

from egath.datasets import build_pairs, make_synthetic_dataset
from egath.features import extract_features
from egath.graph import build_graph, clip_label_embeddings
from egath.search import build_index
from egath.training import train

BITS = 32
# Small widths and few epochs: enough to land far above chance on this data in seconds.
SMALL = dict(epochs=25, lr=1e-3, lr_min=1e-4, d_model=128, ff_dim=256, feature_dim=128,
             gat_hidden=128, selection="last")
TINY = dict(SMALL, epochs=1, d_model=16, ff_dim=16, feature_dim=16, gat_hidden=16)


def prepare_dataset(root, folder, dataset, pretrained=None):
    """pairs.h5, features.h5 and graph.h5 of the synthetic manifest in root/data."""
    out = root / folder
    build_pairs(root / "data" / "manifest.tsv", out / "pairs.h5", dataset, 60, 75, 300, 0)
    extract_features(out / "pairs.h5", out / "features.h5", "egath-tiny-vit", pretrained, 128, 0,
                     "cpu", progress=False)
    build_graph(out / "pairs.h5", out / "graph.h5", 0.3, *clip_label_embeddings(out / "features.h5"))
    return {key: out / f"{key}.h5" for key in ("pairs", "features", "graph")}


def train_model(files, out, bits, params):
    train(files["pairs"], files["features"], files["graph"], out, "egath", bits, params)
    return out


def make_search_demo(root):
    """{"root", "model", "index", "pairs", "features", "graph"} of the shared demo."""
    make_synthetic_dataset(root / "data", 600, 0, 64)
    files = prepare_dataset(root, "demo", "demo")
    model = train_model(files, root / "model.pt", BITS, SMALL)
    index = build_index(model, root / "index.h5", pairs=files["pairs"], features=files["features"])
    return {"root": root, "model": model, "index": index, **files}
