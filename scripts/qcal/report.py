"""Self-contained HTML reports (charts embedded as PNG data URIs): one file a person can open anywhere."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")  # no display on build machines and cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from qcal.coverage import CoverageSummary  # noqa: E402

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.warning { background: #fff4e0; border-left: 4px solid #e08a00; padding: .4em .8em; margin: .3em 0; }
.ok { background: #e8f6e8; border-left: 4px solid #2a8a2a; padding: .4em .8em; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
th { background: #f0f0f0; } td:nth-child(2) { text-align: left; }
tr.LOW td { background: #fff4e0; } tr.MISSING td { background: #fde8e8; } tr.ACT td { background: #fde8e8; }
img { max-width: 100%; }
"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def png_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def images_per_class_chart(table: pd.DataFrame, threshold: int) -> str:
    shown = table[table["images"] > 0].sort_values("images", ascending=False)
    if shown.empty:
        shown = table.head(20)
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(shown) + 2), 3.6))
    colours = ["#2a8a2a" if n >= threshold else "#e08a00" for n in shown["images"]]
    ax.bar(shown["class"], shown["images"], color=colours)
    ax.axhline(threshold, color="#c00", linestyle="--", label=f"threshold: {threshold} images")
    ax.set_ylabel("images containing the class")
    ax.set_title(f"Images per class ({len(shown)} classes seen of {len(table)})")
    ax.tick_params(axis="x", rotation=75, labelsize=8)
    ax.legend()
    return f"<img alt=\"images per class\" src=\"{png_data_uri(fig)}\">"


def table_html(df: pd.DataFrame, row_class: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        css = f" class=\"{html.escape(str(r[row_class]))}\"" if row_class else ""
        cells = "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in r)
        rows.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def format_cell(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return str(value)


def warnings_html(warnings: list[str], all_clear: str) -> str:
    if not warnings:
        return f"<p class=\"ok\">{html.escape(all_clear)}</p>"
    return "".join(f"<p class=\"warning\">{html.escape(w)}</p>" for w in warnings)


def coverage_html(table: pd.DataFrame, s: CoverageSummary, threshold: int) -> str:
    parts = [
        f"<p>{s.images} calibration images; class labels from <b>{html.escape(s.label_source)}</b>; "
        f"{s.classes_ok} classes OK, {s.classes_low} LOW, {s.classes_missing} MISSING "
        f"(OK = at least {threshold} images).</p>",
        warnings_html(s.warnings, "No warnings: the calibration set meets the guidance."),
        "<h2>Images per class</h2>", images_per_class_chart(table, threshold),
    ]
    need = table[table["status"] != "OK"].sort_values(["images", "class_id"])
    if not need.empty:
        parts += ["<h2>Classes to collect more images of</h2>", table_html(need, "status")]
    if s.duplicate_groups:
        items = "".join(f"<li>{len(g)} images: {html.escape(', '.join(g))}</li>" for g in s.duplicate_groups)
        parts += ["<h2>Near-duplicate groups (same scene)</h2>", f"<ul>{items}</ul>"]
    if s.images_without_objects:
        items = "".join(f"<li>{html.escape(i)}</li>" for i in s.images_without_objects)
        parts += ["<h2>Images that contributed no objects</h2>", f"<ul>{items}</ul>"]
    if s.label_problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in s.label_problems)
        parts += ["<h2>Malformed labels (ignored)</h2>", f"<ul>{items}</ul>"]
    parts += ["<h2>All classes</h2>", table_html(table, "status")]
    return page("qcal calibration coverage", "\n".join(parts))


def ap_chart(table: pd.DataFrame) -> str:
    shown = table[table["ap50_agreement"].notna()].sort_values("ap50_agreement")
    if shown.empty:
        return "<p>No class was detected on the evaluation images, so there is no per-class AP to chart.</p>"
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(shown) + 2), 3.4))
    ax.bar(shown["class"], shown["ap50_agreement"], color="#3a6ea5")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP50 (float detections as reference)")
    ax.set_title("Per-class agreement of the quantized model")
    ax.tick_params(axis="x", rotation=75, labelsize=8)
    return f"<img alt=\"per-class agreement\" src=\"{png_data_uri(fig)}\">"


def search_html(search: dict | None) -> str:
    from qcal.search import SearchStep, describe  # the search pulls in ONNX Runtime; only needed here

    if not search:
        return "<p>The accuracy search did not run (no budget set, or no evaluation images).</p>"
    steps = pd.DataFrame([[i, describe(SearchStep(**s)), s["map50_agreement"], s["drop"]]
                          for i, s in enumerate(search["steps"])],
                         columns=["step", "change", "mAP50 agreement", "drop"])
    verdict = "met" if search["met"] else "NOT met"
    precision = next((s["precision"] for s in search["steps"][1:]), "float")
    images = search.get("images") or {}
    scored = (f" on {images['evaluation']} evaluation and {images['calibration']} calibration images"
              if images else "")
    return (f"<p>Budget: agreement drop at most {search['max_drop']}{scored}: {verdict} after "
            f"{len(search['steps']) - 1} steps; each step keeps one more layer in {precision}, with its "
            "activation: the layer that, moved on its own, gave back the most confidence SQNR.</p>"
            + table_html(steps))


def accuracy_html(table: pd.DataFrame, o: dict, summary: str, flag_drop: float, search: dict | None = None) -> str:
    act = table[table["action"] == "ACT"] if "action" in table else table.iloc[0:0]
    warnings = [f"Act on {r['class']}: only {r['calibration_images']} calibration images ({r['coverage']}) and "
                f"AP50 drops by {r['ap50_drop']:.2f}; add calibration images that contain it."
                for _, r in act.iterrows()]
    overview = pd.DataFrame([
        ["mAP50 agreement (float detections as reference)", o["map50_agreement"]],
        ["mAP50-95 agreement", o["map50_95_agreement"]],
        ["SQNR boxes (dB)", o["sqnr_db"]["boxes"]], ["SQNR objectness (dB)", o["sqnr_db"]["objectness"]],
        ["SQNR class scores (dB)", o["sqnr_db"]["classes"]],
        ["size float / quantized (MB)", f"{o['size_mb']['float']} / {o['size_mb']['quantized']}"],
        ["CPU latency float / quantized (ms)", f"{o['latency_ms']['float']} / {o['latency_ms']['quantized']}"],
        ["evaluation images", o["evaluation_images"]],
    ] + ([["mAP50 vs labels: float / quantized", f"{o['labels']['float']['map50']} / {o['labels']['quantized']['map50']}"]]
         if "labels" in o else []), columns=["measure", "value"])
    parts = [f"<pre>{html.escape(summary)}</pre>", warnings_html(warnings, "No class needs action: no class with low coverage lost accuracy."), "<h2>Overall</h2>", table_html(overview),
             "<h2>Mixed-precision search</h2>", search_html(search),
             "<h2>Per class</h2>", ap_chart(table),
             f"<p>ACT: coverage LOW or MISSING and an AP50 drop above {flag_drop}.</p>",
             table_html(table, "action") if not table.empty else "<p>No classes.</p>"]
    return page("qcal quantization accuracy", "\n".join(parts))
