"""Tables and figures from metrics.json files: the mAP table (CSV, Markdown, LaTeX, HTML), the
tuning table, and the precision-recall, precision@N and loss-curve plots. Figures are drawn on matplotlib Figure objects
(Agg), without pyplot's global state."""
from __future__ import annotations

import csv
import html
import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure

from egath.io import atomic_output
from egath.methods import EGATH_FAMILY

__all__ = ["collect_metrics", "method_order", "write_map_table", "write_tuning_table", "plot_pr_curves", "plot_precision_at_n",
           "read_history", "plot_loss_curves"]

TASKS = ("i2t", "t2i")
TASK_TITLES = {"i2t": "image → text", "t2i": "text → image"}
# Okabe & Ito colour-blind safe palette; its yellow, faint on white, comes last
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
           "#F0E442")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# map.csv: one row per seed, then one aggregate row (seed "mean") per dataset x method x bits x task;
# map is the order-free headline, map_index_ties the peers' tie rule (egath.metrics)
CSV_COLUMNS = ("dataset", "method", "bits", "task", "seed", "n_seeds", "map", "map_std", "map_index_ties",
               "map_random_codes", "outlier")
PROTOCOL_COLUMNS = ("n_query", "n_database", "n_train", "split_seed", "map_kind", "tie_rule",
                    "epoch_selection", "tuning", "code_update")
CHANCE_ROW = "random codes"
DAGGER = "†"
OUTLIER_MARK = "‡"
# A seed is an outlier when it lies more than OUTLIER_MADS scaled MADs from its cell's median; the
# MAD is floored so that three nearly equal seeds do not make a 0.003 difference an outlier.
OUTLIER_MADS = 3.0
MAD_FLOOR = 0.005


def collect_metrics(paths) -> list[dict]:
    """Read metrics.json files (docs/formats.md), in the given order.

    A file written before `map` became order-free (it has no `map_index_ties`) is refused:
    its `map` means another number."""
    out = []
    for path in paths:
        try:
            metrics = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
        if any("map_index_ties" not in task for task in metrics.get("tasks", {}).values()):
            raise ValueError(f"{path}: written by an older version, whose `map` broke ties by "
                             "database index; evaluate again (snakemake --forcerun train)")
        out.append(metrics)
    return out


def method_order(runs, listed=()) -> list[str]:
    """The methods of `runs` (metrics or histories) in reading order: EGATH and its ablations,
    then the supervised peers, then the unsupervised methods; within a group in the order of
    `listed` (the config's), then by name."""
    groups = {}
    for run in runs:
        model, kind = run.get("model", run["method"]), run.get("kind", "")
        groups.setdefault(run["method"], 0 if model in EGATH_FAMILY else {"supervised": 1, "unsupervised": 2}.get(kind, 3))
    listed = list(listed)
    return sorted(groups, key=lambda m: (groups[m], listed.index(m) if m in listed else len(listed), m))


# --------------------------------------------------------------------------- tables

def _seed(m) -> int:
    return int(m.get("protocol", {}).get("training_seed", 0))


def _protocol(m) -> dict:
    p = m.get("protocol", {})
    return {"n_query": p.get("n_query", ""), "n_database": p.get("n_database", ""),
            "n_train": p.get("n_train", ""), "split_seed": p.get("split_seed", ""),
            "map_kind": p.get("map", "mAP@all"), "tie_rule": p.get("tie_rule", ""),
            "epoch_selection": p.get("epoch_selection", ""), "tuning": p.get("tuning", ""),
            "code_update": p.get("code_update", "")}


def _rows(metrics, order: list[str]) -> list[dict]:
    """One row per dataset x method x bits x task x seed, methods in `order`."""
    rows, seen = [], set()
    for m in metrics:
        for task, values in m["tasks"].items():
            key = (m["dataset"], m["method"], int(m["bits"]), task, _seed(m))
            if key in seen:
                raise ValueError(f"duplicate metrics for {key}")
            seen.add(key)
            rows.append({**dict(zip(CSV_COLUMNS[:5], key)), "n_seeds": 1, "map": float(values["map"]),
                         "map_std": "", "map_index_ties": float(values["map_index_ties"]),
                         "map_random_codes": float(values["map_random_codes"]), "outlier": "",
                         **_protocol(m)})
    return sorted(rows, key=lambda r: (r["dataset"], order.index(r["method"]), r["bits"], r["task"], r["seed"]))


def _mark_outliers(group: list[dict]) -> None:
    """Mark (outlier "yes") the seeds of one cell more than OUTLIER_MADS scaled MADs (1.4826 x the
    median absolute deviation, at least MAD_FLOOR) from the cell's median; needs three seeds."""
    if len(group) < 3:
        return
    maps = [r["map"] for r in group]
    median = statistics.median(maps)
    mad = max(1.4826 * statistics.median(abs(x - median) for x in maps), MAD_FLOOR)
    for r in group:
        r["outlier"] = "yes" if abs(r["map"] - median) > OUTLIER_MADS * mad else ""


def _aggregate(rows) -> list[dict]:
    """Mean and standard deviation over seeds of each dataset x method x bits x task; marks the
    outlying seed rows."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"], r["bits"], r["task"]), []).append(r)
    out = []
    for key, group in groups.items():
        _mark_outliers(group)
        outliers = sum(r["outlier"] == "yes" for r in group)
        maps = [r["map"] for r in group]
        protocol = {c: group[0][c] for c in PROTOCOL_COLUMNS}
        if len({r["epoch_selection"] for r in group}) > 1:
            protocol["epoch_selection"] = "per seed (see seed rows)"
        out.append({**dict(zip(CSV_COLUMNS[:4], key)), "seed": "mean", "n_seeds": len(group),
                    "map": sum(maps) / len(maps), "map_std": statistics.stdev(maps) if len(maps) > 1 else 0.0,
                    "map_index_ties": sum(r["map_index_ties"] for r in group) / len(group),
                    "map_random_codes": sum(r["map_random_codes"] for r in group) / len(group),
                    "outlier": f"{outliers} of {len(group)} seeds" if outliers else "", **protocol})
    return out


def _csv_value(key, value):
    return f"{value:.6f}" if isinstance(value, float) else value


def _write_text(path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _write_csv(path, columns, rows) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"),
                       ("#", r"\#"), ("_", r"\_"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(char, repl)
    return text


def write_map_table(metrics, csv_path, md_path, tex_path, reference=None, html_path=None,
                    listed=()) -> list[dict]:
    """Write the mAP table as CSV (long format) plus Markdown, LaTeX and (if `html_path`) HTML
    pivot tables; the HTML one is what the Snakemake report shows.

    map.csv: one row per dataset x method x bits x task x training seed, then one aggregate row
    (seed "mean": mean and sample std over the seeds, n_seeds) per dataset x method x bits x
    task; every row carries its protocol (set sizes, split seed, mAP kind, tie rule, epoch
    selection, code update). map_random_codes is the chance level of random codes on the same sets.
    Markdown / LaTeX (booktabs): rows = methods in `method_order` (`listed`: the config's
    order), columns = dataset x task x bits, cells = mean ± std over seeds; the best mean of a
    column is bold only where it exceeds the next best, and the chance level, by more than the
    larger of their standard deviations. A "random codes" row gives the chance level. `reference` is an optional list of dicts {dataset, method, bits, task, map,
    source}: published numbers, shown as extra rows with the method name marked by a dagger and
    a footnote naming the source; they are never bold.
    Returns the aggregate rows.
    """
    methods = method_order(metrics, listed)
    rows = _rows(metrics, methods)
    aggregate = _aggregate(rows)
    columns_csv = CSV_COLUMNS + PROTOCOL_COLUMNS
    _write_csv(csv_path, columns_csv, ({k: _csv_value(k, r[k]) for k in columns_csv} for r in rows + aggregate))

    reference = list(reference or [])
    columns = sorted({(r["dataset"], r["task"], r["bits"]) for r in aggregate}
                     | {(r["dataset"], r["task"], int(r["bits"])) for r in reference},
                     key=lambda c: (c[0], TASKS.index(c[1]) if c[1] in TASKS else 9, c[2]))
    # (mean, std or None for a single seed, mark)
    measured = {(r["method"], r["dataset"], r["task"], r["bits"]):
                (r["map"], r["map_std"] if r["n_seeds"] > 1 else None, OUTLIER_MARK if r["outlier"] else "")
                for r in aggregate}
    n_seeds = sorted({r["n_seeds"] for r in aggregate})
    ref_values, sources = {}, {}
    for r in reference:
        ref_values[(r["method"], r["dataset"], r["task"], int(r["bits"]))] = (float(r["map"]), None, "")
        sources.setdefault(r["method"], [])
        if r["source"] not in sources[r["method"]]:
            sources[r["method"]].append(r["source"])
    ref_methods = sorted(sources)

    chance = {(r["dataset"], r["task"], r["bits"]): (r["map_random_codes"], None, "") for r in aggregate}

    def bold_method(col):
        """The method whose mean beats the next best, chance included, by more than either's std."""
        ranked = sorted([(measured[(m, *col)], m) for m in methods if (m, *col) in measured]
                        + [(chance[col], CHANCE_ROW)] * (col in chance), key=lambda x: x[0][0], reverse=True)
        if len(ranked) < 2 or ranked[0][1] == CHANCE_ROW:
            return None
        (best, best_std, _), m = ranked[0]
        (second, second_std, _), _ = ranked[1]
        return m if best - second > max(best_std or 0, second_std or 0) else None

    bold = {col: bold_method(col) for col in columns}
    table = []  # (name, is_reference, [(mean, std) or None], [bold flags])
    for m in methods:
        cells = [measured.get((m, *col)) for col in columns]
        table.append((m, False, cells, [bold[col] == m for col in columns]))
    table.append((CHANCE_ROW, True, [chance.get(col) for col in columns], [False] * len(columns)))
    for m in ref_methods:
        table.append((m, True, [ref_values.get((m, *col)) for col in columns], [False] * len(columns)))
    seeds_text = " or ".join(str(n) for n in n_seeds)
    notes = [(DAGGER, f"{CHANCE_ROW}: uniformly random codes on the same query and database sets "
                      "(chance level), not a method")]
    notes += [(DAGGER, f"{m}: reported in {'; '.join(sources[m])}, different protocol") for m in ref_methods]
    if any(r["outlier"] for r in aggregate):
        notes.append((OUTLIER_MARK, f"a seed lies more than {OUTLIER_MADS:g} MADs from the median of its cell "
                                    "(map.csv's outlier column names it)"))
    caption = (f"mAP@all, order-free (ties at equal Hamming distance in random order: expected AP); "
               f"mean ± std over {seeds_text} training seed(s); bold: best mean, ahead of the next "
               "and of chance by more than either's std")

    _write_text(md_path, _markdown(table, columns, notes, caption))
    _write_text(tex_path, _latex(table, columns, notes, caption))
    if html_path is not None:
        _write_text(html_path, _html(table, columns, notes, caption))
    return aggregate


TUNING_COLUMNS = ("dataset", "method", "bits", "trials", "epochs", "n_validation", "untuned_validation_map",
                  "tuned_validation_map", "best_trial", "tuned_values")


def write_tuning_table(tunings, csv_path, md_path, html_path, listed=()) -> list[dict]:
    """What each cell's tuning chose (tuning.json files, egath.tuning): the validation mAP of the
    untuned settings (trial 0) and of the best trial, and the best trial's values. CSV, and
    Markdown and HTML tables for the README and the report. Returns the rows."""
    order = method_order([{"method": t["method"], "model": t.get("model", t["method"]),
                           "kind": t.get("kind", "")} for t in tunings], listed)
    rows = []
    for t in sorted(tunings, key=lambda t: (t["dataset"], order.index(t["method"]), t["bits"])):
        untuned = t["trials"][0]["validation_map"]
        rows.append({"dataset": t["dataset"], "method": t["method"], "bits": t["bits"],
                     **{k: t["budget"][k] for k in ("trials", "epochs", "n_validation")},
                     "untuned_validation_map": "" if untuned is None else f"{untuned:.4f}",
                     "tuned_validation_map": f"{t['best']['validation_map']:.4f}",
                     "best_trial": t["best"]["trial"],
                     "tuned_values": ", ".join(f"{k}={v:.3g}" for k, v in t["best"]["settings"].items())
                     or "untuned settings kept"})
    _write_csv(csv_path, TUNING_COLUMNS, rows)
    shown = ("dataset", "method", "bits", "untuned_validation_map", "tuned_validation_map", "tuned_values")
    heads = ("dataset", "method", "bits", "untuned", "tuned", "tuned values")
    caption = ("Tuning: validation mAP (order-free, mean of i2t and t2i, on training pairs held out) of the "
               "untuned settings and of the best trial, and the best trial's values")
    md = [caption + ".", "", "| " + " | ".join(heads) + " |", "|---|---|---:|---:|---:|---|"]
    md += ["| " + " | ".join(str(r[k]) for k in shown) + " |" for r in rows]
    _write_text(md_path, "\n".join(md) + "\n")
    esc = html.escape
    body = "".join("<tr>" + "".join(f"<td>{esc(str(r[k]))}</td>" for k in shown) + "</tr>\n" for r in rows)
    _write_text(html_path, f'<div class="egath-tuning-table">\n<p>{esc(caption)}.</p>\n<table>\n<thead><tr>'
                + "".join(f"<th>{esc(h)}</th>" for h in heads) + f"</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n</div>\n")
    return rows


def _fmt(cell, plus_minus: str = "±") -> str:
    mean, std, mark = cell
    return (f"{mean:.4f}" if std is None else f"{mean:.4f} {plus_minus} {std:.4f}") + mark


def _markdown(table, columns, notes, caption) -> str:
    head = ["method"] + [f"{d} {t} {b}" for d, t, b in columns]
    out = [caption + ".", "", "| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(columns)]
    for name, is_ref, cells, bold in table:
        label = f"{name}{DAGGER}" if is_ref else name
        shown = ["–" if v is None else (f"**{_fmt(v)}**" if b else _fmt(v))
                 for v, b in zip(cells, bold)]
        out.append("| " + " | ".join([label] + shown) + " |")
    text = "\n".join(out) + "\n"
    if notes:
        text += "\n" + "\n".join(f"{mark} {n}" + "  " for mark, n in notes) + "\n"
    return text


def _html(table, columns, notes, caption) -> str:
    """A self-contained HTML table (inline style), for the report's first page."""
    esc = html.escape
    head1 = "".join(f'<th colspan="{n}">{esc(str(d))}</th>' for (d,), n in _spans([c[:1] for c in columns]))
    head2 = "".join(f'<th colspan="{n}">{esc(TASK_TITLES.get(t, t))}</th>'
                    for (_, t), n in _spans([c[:2] for c in columns]))
    head3 = "".join(f"<th>{b} bits</th>" for _, _, b in columns)
    rows = []
    for name, is_ref, cells, bold in table:
        label = esc(name) + (f"<sup>{DAGGER}</sup>" if is_ref else "")
        shown = ["–" if v is None else esc(_fmt(v)) for v in cells]
        tds = "".join(f"<td><b>{v}</b></td>" if b else f"<td>{v}</td>" for v, b in zip(shown, bold))
        style = ' class="reference"' if is_ref else ""
        rows.append(f"<tr{style}><th>{label}</th>{tds}</tr>")
    notes_html = "".join(f"<p><sup>{mark}</sup> {esc(n)}</p>" for mark, n in notes)
    return f"""<div class="egath-map-table">
<style>
.egath-map-table table {{ border-collapse: collapse; font-size: 0.9em; }}
.egath-map-table th, .egath-map-table td {{ padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }}
.egath-map-table tbody th {{ text-align: left; }}
.egath-map-table tr.reference {{ color: #666; font-style: italic; }}
</style>
<p>{esc(caption)}.</p>
<table>
<thead><tr><th rowspan="3">method</th>{head1}</tr><tr>{head2}</tr><tr>{head3}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
{notes_html}
</div>
"""


def _spans(keys):
    """[(value, count)] runs of equal consecutive values."""
    runs = []
    for k in keys:
        if runs and runs[-1][0] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    return runs


def _latex(table, columns, notes, caption) -> str:
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
        shown = ["--" if v is None else _fmt(v, r"$\pm$").replace(OUTLIER_MARK, r"\textsuperscript{\ddag}")
                 for v in cells]
        shown = [rf"\textbf{{{v}}}" if b else v for v, b in zip(shown, bold)]
        out.append(" & ".join([label] + shown) + r" \\")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}")
    out.append(r"\par\smallskip\footnotesize " + _latex_escape(caption).replace("±", r"$\pm$") + ".")
    for mark, note in notes:
        symbol = r"\dag" if mark == DAGGER else r"\ddag"
        out.append(r"\par\smallskip\footnotesize\textsuperscript{" + symbol + "}" + _latex_escape(note))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- figures

def _select(metrics, dataset, bits, listed=()) -> dict[str, list[dict]]:
    """{method: [metrics or history of each seed]} of one dataset at one code length, methods
    in `method_order`."""
    runs = [m for m in metrics if m["dataset"] == dataset and int(m["bits"]) == int(bits)]
    if not runs:
        raise ValueError(f"no runs of dataset {dataset!r} at {bits} bits")
    return {method: sorted((m for m in runs if m["method"] == method), key=_seed)
            for method in method_order(runs, listed)}


def _mean_curve(curves) -> tuple[list, list]:
    """The mean over seeds of curves sampled at the same points (the same Hamming radii, the
    same N): x and y are averaged point by point (PR curves: mean recall, mean precision)."""
    lengths = {len(x) for x, _ in curves} | {len(y) for _, y in curves}
    if len(lengths) != 1:
        raise ValueError("the curves of one method have different numbers of points across seeds")

    def mean(rows):
        return [sum(v) / len(v) for v in zip(*rows)]
    return mean([x for x, _ in curves]), mean([y for _, y in curves])


def _style(i: int) -> dict:
    return {"color": COLOURS[i % len(COLOURS)],
            "linestyle": LINESTYLES[(i // len(COLOURS)) % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)], "markersize": 4, "linewidth": 1.5}


def save_figure(fig: Figure, png_path, pdf_path) -> None:
    """Write `fig` as PNG and PDF, each atomically."""
    for path, fmt in ((png_path, "png"), (pdf_path, "pdf")):
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")


def _plot(metrics, dataset, bits, png_path, pdf_path, curve, xlabel, ylabel, what, listed):
    chosen = _select(metrics, dataset, bits, listed)
    seeds = sorted({len(runs) for runs in chosen.values()})
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, task in zip(axes, TASKS):
        for i, (method, runs) in enumerate(chosen.items()):
            if all(task in m["tasks"] for m in runs):
                x, y = _mean_curve([curve(m["tasks"][task]) for m in runs])
                ax.plot(x, y, label=method, **_style(i))
        ax.set_title(f"{TASK_TITLES[task]} ({task})")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].set_ylim(0, 1.02)
    axes[1].legend(title="method", loc="best", fontsize="small")
    fig.suptitle(f"{what} on {dataset} ({bits} bits), mean over {' or '.join(map(str, seeds))} seed(s)")
    save_figure(fig, png_path, pdf_path)


def plot_pr_curves(metrics, dataset, bits, png_path, pdf_path, listed=()) -> None:
    """Precision-recall curves by Hamming radius: one panel per task, every method of
    `dataset` at `bits` bits (in `method_order`)."""
    def curve(t):
        return t["pr"]["recall"], t["pr"]["precision"]
    _plot(metrics, dataset, bits, png_path, pdf_path, curve, "recall", "precision",
          "Precision-recall (Hamming radius 0..bits)", listed)


def plot_precision_at_n(metrics, dataset, bits, png_path, pdf_path, listed=()) -> None:
    """Precision of the top N ranked items against N: one panel per task, every method."""
    def curve(t):
        return t["precision_at_n"]["n"], t["precision_at_n"]["precision"]
    _plot(metrics, dataset, bits, png_path, pdf_path, curve, "N (top-ranked items)",
          "precision@N", "Precision@N (ties in random order)", listed)


def read_history(model_path) -> dict:
    """{method, model, kind, dataset, bits, history, protocol: {training_seed}} of a trained
    model.pt (no weights)."""
    import torch

    ckpt = torch.load(model_path, map_location="cpu", weights_only=False)
    return {**{key: ckpt[key] for key in ("method", "kind", "dataset", "bits", "history")},
            "model": ckpt["method_spec"]["model"], "protocol": {"training_seed": ckpt["config"]["seed"]}}


NOT_LOSS_TERMS = ("epoch", "lr", "seconds", "validation_map", "code_flip_rate", "multiplier_rms")


def plot_loss_curves(histories, dataset, bits, png_path, pdf_path, listed=()) -> None:
    """Per method, each term of its loss per epoch (mean over seeds; log scale); and the
    validation mAP of the methods that select their epoch on it."""
    chosen = {m: runs for m, runs in _select(histories, dataset, bits, listed).items() if runs[0]["history"]}
    if not chosen:
        raise ValueError(f"no trained runs of dataset {dataset!r} at {bits} bits (closed-form methods only)")
    with_validation = {m: runs for m, runs in chosen.items() if "validation_map" in runs[0]["history"][0]}
    n_panels = len(chosen) + bool(with_validation)
    n_cols = min(4, n_panels)
    n_rows = -(-n_panels // n_cols)
    fig = Figure(figsize=(3.6 * n_cols, 3.0 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()

    def mean_series(runs, key):
        return _mean_curve([([e["epoch"] for e in r["history"]], [e[key] for e in r["history"]]) for r in runs])

    for ax, (method, runs) in zip(axes, chosen.items()):
        terms = [k for k in runs[0]["history"][0] if k not in NOT_LOSS_TERMS]
        shown = [t for t in terms if t != "total"] or ["total"]  # the terms, or the total when it is all there is
        for i, term in enumerate(shown):
            epochs, values = mean_series(runs, term)
            ax.plot(epochs, values, label=term, **{**_style(i), "marker": None})
        if all(v > 0 for t in shown for v in mean_series(runs, t)[1]):
            ax.set_yscale("log")
        ax.set_title(method, fontsize="medium")
        ax.legend(fontsize="x-small", loc="best")
    if with_validation:
        ax = axes[len(chosen)]
        for i, (method, runs) in enumerate(with_validation.items()):
            ax.plot(*mean_series(runs, "validation_map"), label=method, **{**_style(i), "marker": None})
        ax.set_title("validation mAP (mean of i2t, t2i)", fontsize="medium")
        ax.legend(fontsize="x-small", loc="best")
    for ax in axes[:n_panels]:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    seeds = sorted({len(runs) for runs in chosen.values()})
    fig.suptitle(f"Training on {dataset} ({bits} bits): loss terms per training pair, "
                 f"mean over {' or '.join(map(str, seeds))} seed(s)")
    save_figure(fig, png_path, pdf_path)


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
