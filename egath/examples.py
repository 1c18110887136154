"""Retrieval examples for the report: what a trained model returns for a few fixed queries.

For one dataset x method x bits (codes.h5 and pairs.h5), queries are drawn from the query set
with a fixed seed, so every method and code length shows the same queries. A text query shows
its top 10 images as thumbnails, an image query its top 5 texts; each result is marked
relevant (it shares a label with the query, the rule the metrics use) or not. Ranking is by
Hamming distance, ties by database index, as in the metrics.
"""
from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.figure import Figure

from egath.io import open_h5, string_array

__all__ = ["retrieval_examples"]

RELEVANT, IRRELEVANT = "#009E73", "#D55E00"  # Okabe & Ito green and vermilion; the marks say it too
MARKS = {True: "✓", False: "✗"}
THUMBNAIL = 128  # pixels, longest side


CODES = ("query/image", "query/text", "database/image", "database/text", "query/labels",
         "database/labels", "query/rows", "database/rows")


def _read(codes_path, pairs_path) -> dict:
    with open_h5(codes_path, CODES) as f:
        data = {key: f[key][()] for key in CODES}
        attrs = {key: f.attrs.get(key, "") for key in ("dataset", "method", "bits")}
    with open_h5(pairs_path, ("ids", "image_paths", "texts", "labels", "label_names",
                              "split/query", "split/database")) as f:
        for key in ("ids", "image_paths", "texts", "label_names"):
            data[key] = string_array(f[key][()])
        splits = {split: f[f"split/{split}"][()] for split in ("query", "database")}
        labels = f["labels"][()]
    # codes.h5 names the pairs.h5 rows of its codes: the split's, less any whose image was
    # skipped at extraction; check that they are rows of that split, with these labels
    data["rows"] = {split: data.pop(f"{split}/rows") for split in splits}
    for split, rows in data["rows"].items():
        if (len(rows) != len(data[f"{split}/labels"]) or not np.isin(rows, splits[split]).all()
                or not np.array_equal(labels[rows] > 0, data[f"{split}/labels"] > 0)):
            raise ValueError(f"{codes_path} does not hold the {split} set of {pairs_path}: its "
                             f"{split}/rows are not rows of split/{split} with the same labels "
                             "(codes of another pairs.h5?)")
    data["labels_all"] = labels
    data["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    return data


def _ranked(data, query_key: str, database_key: str, q: int, k: int) -> dict:
    from egath.hamming import hamming_topk

    order, distances = hamming_topk(data[query_key][q:q + 1], data[database_key], k)
    relevant = (data["database/labels"][order[0]].astype(np.int64) @ data["query/labels"][q]) > 0
    rows = data["rows"]["database"][order[0]]
    return {"ranked_rows": rows.tolist(), "ranked_ids": [data["ids"][r] for r in rows],
            "distances": distances[0].tolist(), "relevant": relevant.tolist()}


def _labels(data, row) -> list[str]:
    return [data["label_names"][c] for c in np.flatnonzero(data["labels_all"][row])]


def retrieval_examples(codes_path, pairs_path, png_path, pdf_path, *, n_text: int = 3,
                       n_image: int = 3, seed: int = 0, k_images: int = 10, k_texts: int = 5) -> dict:
    """Draw the figure of `n_text` text and `n_image` image queries (PNG and PDF).

    Queries are distinct rows of the query set drawn with `numpy.random.default_rng(seed)`
    (the first `n_text` as text queries, the rest as image queries). Returns what is drawn:
    {"text_queries": [...], "image_queries": [...]}, each query a dict with its row, id, text
    and labels, and its results' ranked_rows and ranked_ids (pairs.h5 rows and ids),
    distances and relevant flags.
    """
    data = _read(codes_path, pairs_path)
    n_query = len(data["rows"]["query"])
    if n_text + n_image > n_query:
        raise ValueError(f"{n_text} + {n_image} example queries, but the query set of {pairs_path} "
                         f"has {n_query} rows")
    picks = np.random.default_rng(seed).choice(n_query, n_text + n_image, replace=False)
    examples = {"text_queries": [], "image_queries": []}
    for i, q in enumerate(picks):
        text_query = i < n_text
        row = int(data["rows"]["query"][q])
        entry = {"row": row, "id": data["ids"][row], "text": data["texts"][row],
                 "image": data["image_paths"][row], "labels": _labels(data, row)}
        if text_query:
            entry.update(_ranked(data, "query/text", "database/image", q, k_images))
            examples["text_queries"].append(entry)
        else:
            entry.update(_ranked(data, "query/image", "database/text", q, k_texts))
            examples["image_queries"].append(entry)
    _draw(examples, data, png_path, pdf_path, seed, k_images, k_texts)
    return examples


def _thumbnail(path: str, row: int, data):
    from egath.features import open_image

    try:
        im = open_image(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path!r} (id {data['ids'][row]!r}) for the retrieval "
                         f"examples: {e}") from e
    im.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(im)


def _frame(ax, colour: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)


def _short(text: str, width: int, lines: int) -> str:
    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder=" …")) or "(empty text)"


def _draw(examples, data, png_path, pdf_path, seed, k_images, k_texts) -> None:
    from egath.reporting import save_figure

    rows = len(examples["text_queries"]) + len(examples["image_queries"])
    columns = 1 + k_images
    fig = Figure(figsize=(1.35 * columns, 1.75 * rows + 0.6))
    grid = fig.add_gridspec(rows, columns, hspace=0.55, wspace=0.08)
    r = 0
    for query in examples["text_queries"]:
        ax = fig.add_subplot(grid[r, 0])
        ax.axis("off")
        ax.text(0, 0.5, f"text query\n“{_short(query['text'], 15, 4)}”\nlabels:\n"
                        f"{_short(', '.join(query['labels']), 15, 2)}",
                va="center", ha="left", fontsize=7, transform=ax.transAxes)
        for c, (row, d, rel) in enumerate(zip(query["ranked_rows"], query["distances"], query["relevant"])):
            ax = fig.add_subplot(grid[r, 1 + c])
            ax.imshow(_thumbnail(data["image_paths"][row], row, data))
            _frame(ax, RELEVANT if rel else IRRELEVANT)
            ax.set_title(f"{c + 1}. d={d} {MARKS[rel]}", fontsize=7, color=RELEVANT if rel else IRRELEVANT)
        r += 1
    for query in examples["image_queries"]:
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(_thumbnail(query["image"], query["row"], data))
        _frame(ax, "black")
        ax.set_title("image query", fontsize=7)
        ax.set_xlabel(_short(", ".join(query["labels"]), 15, 2), fontsize=7)
        ax = fig.add_subplot(grid[r, 1:])
        ax.axis("off")
        n = len(query["ranked_rows"])
        for c, (row, d, rel) in enumerate(zip(query["ranked_rows"], query["distances"], query["relevant"])):
            line = (f"{c + 1}. d={d} {MARKS[rel]}  {_short(data['texts'][row], 110, 1)}"
                    f"   [{', '.join(_labels(data, row))}]")
            ax.text(0, 1 - (c + 0.5) / n, line, va="center", ha="left", fontsize=7,
                    color=RELEVANT if rel else IRRELEVANT, transform=ax.transAxes)
        r += 1
    attrs = data["attrs"]
    fig.suptitle(f"Retrieval examples: {attrs['method']} on {attrs['dataset']}, {attrs['bits']} bits\n"
                 f"queries drawn from the query set with seed {seed}; top {k_images} images of a text, "
                 f"top {k_texts} texts of an image; {MARKS[True]} shares a label with the query, "
                 f"{MARKS[False]} does not; d = Hamming distance", fontsize=8)
    save_figure(fig, png_path, pdf_path)
