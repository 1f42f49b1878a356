"""What quantization cost, class by class: the evaluation joined with the calibration set's coverage,
as TSV, JSON, console text and a self-contained HTML page. The headline figure comes only from images
that neither calibration nor the search used, with its interval and the objects it rests on; when they
are too few to tell 0.95 from 0.98 the report says so."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from qcal.evaluate import Evaluation
from qcal.report.html import page, png_data_uri, table_html, warnings_html
from qcal.report.text import plural
from qcal.search.steps import SearchStep

# An interval wider than this cannot tell 0.95 from 0.98 apart.
RESOLVABLE_WIDTH = 0.03


def headline_backend(ev: Evaluation, runtime: str) -> str:
    """The backend the headline figure comes from: the target's own kernels when they ran."""
    htp = [name for name in ev.backends if name.startswith("htp")]
    return htp[0] if runtime == "htp" and htp else "cpu"


def accuracy_table(ev: Evaluation, coverage: pd.DataFrame, flag_drop: float, backend: str = "cpu") -> pd.DataFrame:
    """One row per class that appears in coverage or evaluation: coverage next to what quantization cost
    (on `backend`). ACT marks classes the user must act on: LOW/MISSING coverage and a large drop."""
    if not ev.detector:
        return pd.DataFrame(columns=["class_id", "class", "calibration_images", "coverage", "action"])
    scores = ev.backends[backend]
    rows = []
    agree = scores.agreement["classes"]
    for _, c in coverage.iterrows():
        cid = int(c["class_id"])
        a = agree.get(cid, {})
        row = {"class_id": cid, "class": c["class"], "calibration_images": int(c["images"]),
               "coverage": c["status"], "eval_reference_objects": a.get("n_truth", 0),
               "ap50_agreement": a.get("ap50"), "ap50_95_agreement": a.get("ap50_95")}
        if ev.float_vs_labels is not None:
            f = ev.float_vs_labels["classes"].get(cid, {})
            q = scores.vs_labels["classes"].get(cid, {})
            row.update({"eval_labels": f.get("n_truth", 0), "float_ap50": f.get("ap50"), "quant_ap50": q.get("ap50")})
            drop = (f["ap50"] - q["ap50"]) if f.get("ap50") is not None and q.get("ap50") is not None else None
        else:
            drop = (1 - a["ap50"]) if a.get("ap50") is not None else None
        row["ap50_drop"] = drop
        seen = row["eval_reference_objects"] or row.get("eval_labels", 0) or row["calibration_images"]
        if not seen:
            continue
        row["action"] = "ACT" if drop is not None and drop > flag_drop and c["status"] != "OK" else ""
        rows.append(row)
    return pd.DataFrame(rows)


def overall(ev: Evaluation, float_model: str | Path, quant_model: str | Path, runtime: str,
            search: dict | None = None) -> dict:
    """The figures of results/reports/accuracy.json."""
    result: dict = {"evaluation_images": ev.images, "detector": ev.detector,
                    "size_mb": {"float": round(os.path.getsize(float_model) / 1e6, 2),
                                "quantized": round(os.path.getsize(quant_model) / 1e6, 2)},
                    "latency_ms": ev.latency_ms, "htp_seconds_per_image": ev.seconds_per_image}
    backends = {}
    for name, scores in ev.backends.items():
        entry: dict = {"sqnr_db": scores.sqnr_db}
        if ev.detector:
            entry.update(map50_agreement=scores.agreement["map50"], map50_95_agreement=scores.agreement["map50_95"],
                         interval90=list(scores.interval) if scores.interval else None)
            if scores.vs_labels is not None:
                entry["quantized_vs_labels"] = {"map50": scores.vs_labels["map50"],
                                                "map50_95": scores.vs_labels["map50_95"]}
        else:
            entry["top1_agreement"] = scores.top1_agreement
        backends[name] = entry
    result["backends"] = backends
    best = headline_backend(ev, runtime)
    if ev.detector:
        head = backends[best]
        interval = head["interval90"]
        result["headline"] = {
            "backend": best, "map50_agreement": head["map50_agreement"], "interval90": interval,
            "float_objects": ev.backends[best].agreement["n_truth"],
            "resolvable": bool(interval) and interval[1] - interval[0] <= RESOLVABLE_WIDTH}
        if ev.float_vs_labels is not None:
            result["float_vs_labels"] = {"map50": ev.float_vs_labels["map50"], "map50_95": ev.float_vs_labels["map50_95"]}
    if search:
        result["search_in_sample"] = {"map50_agreement": search["agreement_in_sample"],
                                      "images": search.get("images"),
                                      "note": "the search's own figure, on the images it tuned on: not an estimate"}
    return result


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(interval) -> str:
    return f"90% interval {interval[0]:.3f}-{interval[1]:.3f}" if interval else "no interval: too few images"


def backend_label(name: str) -> str:
    return "ONNX Runtime CPU" if name == "cpu" else name.replace("htp ", "the HTP simulator, ")


def accuracy_text(o: dict, table: pd.DataFrame) -> str:
    if not o["detector"]:
        lines = [f"qcal accuracy on {plural(o['evaluation_images'], 'test image')} (used by neither calibration nor the "
                 "search):",
                 "  the model is not a YOLO-style detector, so there is no detection agreement:"]
        for name, b in o["backends"].items():
            top1 = f", top-1 agreement {_fmt(b['top1_agreement'])}" if b["top1_agreement"] is not None else ""
            lines.append(f"    {backend_label(name)}: output SQNR {b['sqnr_db']['all']:.1f} dB{top1}")
        lines.append(f"  size {o['size_mb']['float']} MB -> {o['size_mb']['quantized']} MB")
        return "\n".join(lines) + "\n"
    head = o["headline"]
    lines = [f"qcal accuracy on {plural(o['evaluation_images'], 'test image')} (used by neither calibration nor the "
             f"search), {plural(head['float_objects'], 'float object')}:",
             f"  agreement with the float model, mAP50 on {backend_label(head['backend'])}: "
             f"{_fmt(head['map50_agreement'])} ({_interval(head['interval90'])})"]
    if not head["resolvable"]:
        lines.append(f"  too few objects to tell 0.95 from 0.98 apart: add test images (evaluation.images, or a "
                     "larger evaluation.holdout)")
    for name, b in o["backends"].items():
        if name != head["backend"]:
            lines.append(f"  on {backend_label(name)}: mAP50 {_fmt(b['map50_agreement'])} ({_interval(b['interval90'])})")
    if "search_in_sample" in o:
        lines.append(f"  (the search's own figure, on the images it tuned on, was "
                     f"{_fmt(o['search_in_sample']['map50_agreement'])}: not an estimate for new images)")
    b = o["backends"][head["backend"]]
    lines.append(f"  output SQNR: boxes {b['sqnr_db']['boxes']:.1f} dB, objectness {b['sqnr_db']['objectness']:.1f} dB, "
                 f"class scores {b['sqnr_db']['classes']:.1f} dB")
    lines.append(f"  size {o['size_mb']['float']} MB -> {o['size_mb']['quantized']} MB; CPU latency "
                 f"{o['latency_ms'].get('float')} ms -> {o['latency_ms'].get('quantized')} ms per image"
                 + "".join(f"; {backend_label(n)} {s} s per image" for n, s in o["htp_seconds_per_image"].items()))
    if "float_vs_labels" in o:
        quantized = b.get("quantized_vs_labels", {}).get("map50")
        lines.append(f"  against labels: float mAP50 {_fmt(o['float_vs_labels']['map50'])}, quantized {_fmt(quantized)}")
    act = table[table.get("action", pd.Series(dtype=str)) == "ACT"] if not table.empty else table
    if not act.empty:
        lines.append(f"  act on: {', '.join(act['class'])} (low coverage and a large drop: add images of them)")
    return "\n".join(lines) + "\n"


def ap_chart(table: pd.DataFrame) -> str:
    shown = table[table["ap50_agreement"].notna()].sort_values("ap50_agreement")
    if shown.empty:
        return "<p>No class was detected on the test images, so there is no per-class AP to chart.</p>"
    fig = Figure(figsize=(max(6, 0.35 * len(shown) + 2), 3.4))
    ax = fig.subplots()
    ax.bar(shown["class"], shown["ap50_agreement"], color="#3a6ea5")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AP50 (float detections as reference)")
    ax.set_title("Per-class agreement of the quantized model")
    ax.tick_params(axis="x", rotation=75, labelsize=8)
    return f"<img alt=\"per-class agreement\" src=\"{png_data_uri(fig)}\">"


def search_html(search: dict | None) -> str:
    if not search:
        return "<p>The accuracy search did not run (no budget set, nothing a layer could move to, or no search images).</p>"
    steps = pd.DataFrame([[i, SearchStep(**s).describe(), s["map50_agreement"], s["drop"]]
                          for i, s in enumerate(search["steps"])],
                         columns=["step", "change", "mAP50 agreement (in-sample)", "drop"])
    verdict = "met" if search["met"] else "NOT met"
    precision = next((s["precision"] for s in search["steps"][1:]), "int16")
    images = search.get("images") or {}
    scored = (f" on {images['evaluation']} search and {images['calibration']} calibration images"
              if images else "")
    return (f"<p>Budget: agreement drop at most {search['max_drop']}{scored}: {verdict} after "
            f"{len(search['steps']) - 1} steps; each step tries one more layer in {precision}, with its activation "
            "(the layer that, moved on its own, gave back the most confidence SQNR), and keeps it only when the "
            "agreement improves on both halves of the search images. These agreements are measured on the images "
            "the search tuned on; the figures above are on images it never saw.</p>"
            + table_html(steps))


def accuracy_html(table: pd.DataFrame, o: dict, summary: str, flag_drop: float, search: dict | None = None) -> str:
    rows = [["test images (used by neither calibration nor the search)", o["evaluation_images"]]]
    for name, b in o["backends"].items():
        if o["detector"]:
            interval = b["interval90"]
            rows.append([f"mAP50 agreement on {backend_label(name)} (90% interval)",
                         f"{_fmt(b['map50_agreement'])}" + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else "")])
            rows.append([f"mAP50-95 agreement on {backend_label(name)}", b["map50_95_agreement"]])
            rows.append([f"SQNR boxes / objectness / class scores on {backend_label(name)} (dB)",
                         f"{b['sqnr_db']['boxes']:.1f} / {b['sqnr_db']['objectness']:.1f} / {b['sqnr_db']['classes']:.1f}"])
        else:
            rows.append([f"output SQNR on {backend_label(name)} (dB)", b["sqnr_db"]["all"]])
            rows.append([f"top-1 agreement on {backend_label(name)}", b["top1_agreement"]])
    if o["detector"]:
        rows.append(["float objects the figures rest on", o["headline"]["float_objects"]])
    rows.append(["size float / quantized (MB)", f"{o['size_mb']['float']} / {o['size_mb']['quantized']}"])
    if o["latency_ms"]:
        rows.append(["CPU latency float / quantized (ms)", f"{o['latency_ms']['float']} / {o['latency_ms']['quantized']}"])
    for name, seconds in o["htp_seconds_per_image"].items():
        rows.append([f"{backend_label(name)}: seconds per image", seconds])
    overview = pd.DataFrame(rows, columns=["measure", "value"])
    parts = [f"<pre>{html.escape(summary)}</pre>"]
    if o["detector"]:
        act = table[table["action"] == "ACT"] if "action" in table else table.iloc[0:0]
        warnings = [f"Act on {r['class']}: only {r['calibration_images']} calibration images ({r['coverage']}) and "
                    f"AP50 drops by {r['ap50_drop']:.2f}; add calibration images that contain it."
                    for _, r in act.iterrows()]
        if not o["headline"]["resolvable"]:
            warnings.insert(0, f"Only {o['headline']['float_objects']} float objects on {o['evaluation_images']} test "
                            "images: too few to tell an agreement of 0.95 from 0.98. Add test images.")
        parts.append(warnings_html(warnings, "No class needs action: no class with low coverage lost accuracy."))
    parts += ["<h2>Overall</h2>", table_html(overview)]
    if o["detector"]:
        parts += ["<h2>Mixed-precision search</h2>", search_html(search),
                  "<h2>Per class</h2>", ap_chart(table),
                  f"<p>ACT: coverage LOW or MISSING and an AP50 drop above {flag_drop}.</p>",
                  table_html(table, "action") if not table.empty else "<p>No classes.</p>"]
    return page("qcal quantization accuracy", "\n".join(parts))
