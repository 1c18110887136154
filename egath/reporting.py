"""Tables and figures from metrics.json files: the mAP table (CSV, Markdown, LaTeX) and the
precision-recall and precision@N plots. Figures are drawn on matplotlib Figure objects
(Agg), without pyplot's global state."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from matplotlib.figure import Figure

from egath.io import atomic_output

__all__ = ["collect_metrics", "write_map_table", "plot_pr_curves", "plot_precision_at_n",
           "read_history", "plot_loss_curves"]

TASKS = ("i2t", "t2i")
TASK_TITLES = {"i2t": "image → text", "t2i": "text → image"}
# Okabe & Ito colour-blind safe palette; its yellow, faint on white, comes last
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
           "#F0E442")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
CSV_COLUMNS = ("dataset", "method", "bits", "task", "map", "map_tie_aware", "map_random_codes")
CHANCE_ROW = "random codes"
DAGGER = "†"


def collect_metrics(paths) -> list[dict]:
    """Read metrics.json files (docs/formats.md), in the given order."""
    out = []
    for path in paths:
        try:
            out.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
    return out


# --------------------------------------------------------------------------- tables

def _rows(metrics) -> list[dict]:
    rows, seen = [], set()
    for m in metrics:
        for task, values in m["tasks"].items():
            key = (m["dataset"], m["method"], int(m["bits"]), task)
            if key in seen:
                raise ValueError(f"duplicate metrics for {key}")
            seen.add(key)
            rows.append(dict(zip(CSV_COLUMNS, (*key, float(values["map"]), float(values["map_tie_aware"]),
                                               float(values["map_random_codes"])))))
    return sorted(rows, key=lambda r: (r["dataset"], r["method"], r["bits"], r["task"]))


def _write_text(path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"),
                       ("#", r"\#"), ("_", r"\_"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(char, repl)
    return text


def write_map_table(metrics, csv_path, md_path, tex_path, reference=None) -> list[dict]:
    """Write the mAP table as CSV (long format) plus Markdown and LaTeX pivot tables.

    map.csv: one row per dataset x method x bits x task of `metrics`, sorted, with columns
    dataset, method, bits, task, map, map_tie_aware, map_random_codes (measured results only;
    the last is the chance level of random codes on the same sets).
    Markdown / LaTeX (booktabs): rows = methods, columns = dataset x task x bits; the best
    measured value of each column is bold, and a "random codes" row gives the chance level.
    `reference` is an optional list of dicts
    {dataset, method, bits, task, map, source}: published numbers, shown as extra rows with the
    method name marked by a dagger and a footnote naming the source; they are never bold.
    Returns the CSV rows.
    """
    rows = _rows(metrics)
    with atomic_output(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows({**r, **{key: f"{r[key]:.6f}" for key in CSV_COLUMNS[4:]}} for r in rows)

    reference = list(reference or [])
    columns = sorted({(r["dataset"], r["task"], r["bits"]) for r in rows}
                     | {(r["dataset"], r["task"], int(r["bits"])) for r in reference},
                     key=lambda c: (c[0], TASKS.index(c[1]) if c[1] in TASKS else 9, c[2]))
    measured = {(r["method"], r["dataset"], r["task"], r["bits"]): r["map"] for r in rows}
    methods = sorted({r["method"] for r in rows})
    ref_values, sources = {}, {}
    for r in reference:
        ref_values[(r["method"], r["dataset"], r["task"], int(r["bits"]))] = float(r["map"])
        sources.setdefault(r["method"], [])
        if r["source"] not in sources[r["method"]]:
            sources[r["method"]].append(r["source"])
    ref_methods = sorted(sources)

    def fmt(v):
        return f"{v:.4f}"

    # bold = the best value as printed, so equal printed values are all bold
    best = {}
    for col in columns:
        vals = [fmt(measured[(m, *col)]) for m in methods if (m, *col) in measured]
        best[col] = max(vals, key=float) if vals else None

    table = []  # (name, is_reference, [cell or None], [bold flags])
    for m in methods:
        cells = [measured.get((m, *col)) for col in columns]
        table.append((m, False, cells,
                      [v is not None and fmt(v) == best[col] for v, col in zip(cells, columns)]))
    chance = {(r["dataset"], r["task"], r["bits"]): r["map_random_codes"] for r in rows}
    table.append((CHANCE_ROW, True, [chance.get(col) for col in columns], [False] * len(columns)))
    for m in ref_methods:
        table.append((m, True, [ref_values.get((m, *col)) for col in columns],
                      [False] * len(columns)))
    notes = [f"{CHANCE_ROW}: uniformly random codes on the same query and database sets "
             "(chance level), not a method"]
    notes += [f"{m}: reported in {'; '.join(sources[m])}, different protocol" for m in ref_methods]

    _write_text(md_path, _markdown(table, columns, notes, fmt))
    _write_text(tex_path, _latex(table, columns, notes, fmt))
    return rows


def _markdown(table, columns, notes, fmt) -> str:
    head = ["method"] + [f"{d} {t} {b}" for d, t, b in columns]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(columns)]
    for name, is_ref, cells, bold in table:
        label = f"{name}{DAGGER}" if is_ref else name
        shown = ["–" if v is None else (f"**{fmt(v)}**" if b else fmt(v))
                 for v, b in zip(cells, bold)]
        out.append("| " + " | ".join([label] + shown) + " |")
    text = "\n".join(out) + "\n"
    if notes:
        text += "\n" + "\n".join(f"{DAGGER} {n}" + "  " for n in notes) + "\n"
    return text


def _spans(keys):
    """[(value, count)] runs of equal consecutive values."""
    runs = []
    for k in keys:
        if runs and runs[-1][0] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    return runs


def _latex(table, columns, notes, fmt) -> str:
    n = len(columns)
    out = [r"\begin{tabular}{l" + "r" * n + "}", r"\toprule"]
    for level in (1, 2):  # dataset row, then dataset x task row (spanning the bits)
        keys = [c[:level] for c in columns]
        cells, rules, start = [], [], 2
        for key, span in _spans(keys):
            label = _latex_escape(str(key[-1]))
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{label}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        out.append(" & " + " & ".join(cells) + r" \\")
        out.append(" ".join(rules))
    out.append("method & " + " & ".join(f"{c[2]} bits" for c in columns) + r" \\")
    out.append(r"\midrule")
    first_ref = True
    for name, is_ref, cells, bold in table:
        if is_ref and first_ref:
            out.append(r"\midrule")
            first_ref = False
        label = _latex_escape(name) + (r"\textsuperscript{\dag}" if is_ref else "")
        shown = ["--" if v is None else (rf"\textbf{{{fmt(v)}}}" if b else fmt(v))
                 for v, b in zip(cells, bold)]
        out.append(" & ".join([label] + shown) + r" \\")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}")
    for note in notes:
        out.append(r"\par\smallskip\footnotesize\textsuperscript{\dag}" + _latex_escape(note))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- figures

def _select(metrics, dataset, bits) -> list[dict]:
    chosen = sorted((m for m in metrics if m["dataset"] == dataset and int(m["bits"]) == int(bits)),
                    key=lambda m: m["method"])
    if not chosen:
        raise ValueError(f"no runs of dataset {dataset!r} at {bits} bits")
    return chosen


def _style(i: int) -> dict:
    return {"color": COLOURS[i % len(COLOURS)],
            "linestyle": LINESTYLES[(i // len(COLOURS)) % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)], "markersize": 4, "linewidth": 1.5}


def _save(fig: Figure, png_path, pdf_path) -> None:
    for path, fmt in ((png_path, "png"), (pdf_path, "pdf")):
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")


def _plot(metrics, dataset, bits, png_path, pdf_path, curve, xlabel, ylabel, what):
    chosen = _select(metrics, dataset, bits)
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, task in zip(axes, TASKS):
        for i, m in enumerate(chosen):
            if task in m["tasks"]:
                x, y = curve(m["tasks"][task])
                ax.plot(x, y, label=m["method"], **_style(i))
        ax.set_title(f"{TASK_TITLES[task]} ({task})")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].set_ylim(0, 1.02)
    axes[1].legend(title="method", loc="best", fontsize="small")
    fig.suptitle(f"{what} on {dataset} ({bits} bits)")
    _save(fig, png_path, pdf_path)


def plot_pr_curves(metrics, dataset, bits, png_path, pdf_path) -> None:
    """Precision-recall curves by Hamming radius: one panel per task, every method of
    `dataset` at `bits` bits."""
    def curve(t):
        return t["pr"]["recall"], t["pr"]["precision"]
    _plot(metrics, dataset, bits, png_path, pdf_path, curve, "recall", "precision",
          "Precision-recall (Hamming radius 0..bits)")


def plot_precision_at_n(metrics, dataset, bits, png_path, pdf_path) -> None:
    """Precision of the top N ranked items against N: one panel per task, every method."""
    def curve(t):
        return t["precision_at_n"]["n"], t["precision_at_n"]["precision"]
    _plot(metrics, dataset, bits, png_path, pdf_path, curve, "N (top-ranked items)",
          "precision@N", "Precision@N")


def read_history(model_path) -> dict:
    """{method, dataset, bits, history} of a trained model.pt (the weights are not kept)."""
    import torch

    ckpt = torch.load(model_path, map_location="cpu", weights_only=False)
    return {key: ckpt[key] for key in ("method", "dataset", "bits", "history")}


def plot_loss_curves(histories, dataset, bits, png_path, pdf_path) -> None:
    """Total training loss per epoch of every method (log scale), and the validation mAP of
    those that select their epoch on it."""
    chosen = _select(histories, dataset, bits)
    with_validation = [h for h in chosen if any("validation_map" in e for e in h["history"])]
    fig = Figure(figsize=(10 if with_validation else 5.5, 4.2))
    axes = fig.subplots(1, 2 if with_validation else 1, squeeze=False)[0]
    for i, h in enumerate(chosen):
        epochs = [e["epoch"] for e in h["history"]]
        if epochs:
            axes[0].plot(epochs, [e["total"] for e in h["history"]], label=h["method"], **_style(i))
        if h in with_validation:
            axes[1].plot(epochs, [e["validation_map"] for e in h["history"]], label=h["method"], **_style(i))
    axes[0].set_yscale("log")
    axes[0].set_ylabel("total loss (per training pair)")
    if with_validation:
        axes[1].set_ylabel("validation mAP (mean of i2t, t2i)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(title="method", loc="best", fontsize="small")
    fig.suptitle(f"Training on {dataset} ({bits} bits)")
    _save(fig, png_path, pdf_path)


def read_reference_table(path=None) -> list[dict]:
    """Published numbers from a CSV with columns dataset, method, bits, task, map, source."""
    if path is None:
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    required = {"dataset", "method", "bits", "task", "map", "source"}
    for line, row in enumerate(rows, start=2):
        missing = sorted(key for key in required if not row.get(key))
        if missing:
            raise ValueError(f"{path}:{line}: missing {missing}")
        if row["task"] not in TASKS:
            raise ValueError(f"{path}:{line}: task must be one of {TASKS}, got {row['task']!r}")
    return rows
