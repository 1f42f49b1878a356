"""Is the calibration set good enough? Per-class coverage against SNPE's guidance (200+ images for
detection, ~3 per class, not all one scene), from labels or from the float model's own detections."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass

import pandas as pd
from matplotlib.figure import Figure

from qcal.labels import Labels
from qcal.report.html import page, png_data_uri, table_html, warnings_html
from qcal.report.text import plural

COVERAGE_COLUMNS = ["class_id", "class", "images", "instances", "share", "status"]


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def near_duplicate_groups(hashes: dict[str, int], max_distance: int) -> list[list[str]]:
    """Groups of images whose perceptual hashes are within max_distance bits (single linkage),
    largest first; singletons are left out."""
    images = sorted(hashes)
    parent = {image: image for image in images}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, a in enumerate(images):
        for b in images[i + 1:]:
            if hamming(hashes[a], hashes[b]) <= max_distance:
                parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for image in images:
        groups.setdefault(root(image), []).append(image)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g))


def coverage_table(labels: Labels, names: list[str], min_images: int) -> pd.DataFrame:
    rows = []
    total = max(len(labels.per_image), 1)
    for class_id, name in enumerate(names):
        images = sum(1 for classes in labels.per_image.values() if class_id in classes)
        instances = sum(classes.count(class_id) for classes in labels.per_image.values())
        status = "OK" if images >= min_images else "LOW" if images > 0 else "MISSING"
        rows.append([class_id, name, images, instances, round(images / total, 4), status])
    return pd.DataFrame(rows, columns=COVERAGE_COLUMNS)


@dataclass
class CoverageSettings:
    min_images_per_class: int = 3
    warn_below_images: int = 50
    advise_below_images: int = 200
    duplicate_distance: int = 12
    dominant_share: float = 0.3


@dataclass
class CoverageSummary:
    images: int
    label_source: str
    classes_ok: int
    classes_low: int
    classes_missing: int
    largest_scene_group: int
    largest_scene_share: float
    warnings: list[str]
    collect_more: list[str]
    images_without_objects: list[str]
    duplicate_groups: list[list[str]]
    label_problems: list[str]


NOT_A_DETECTOR = ("the model is not a YOLO-style detector (its output is {shape}), so its own outputs give no "
                  "class labels: coverage per class needs labels (labels.yolo_dir or labels.coco_json)")


def summarize(table: pd.DataFrame, labels: Labels, groups: list[list[str]], s: CoverageSettings,
              not_a_detector: str = "") -> CoverageSummary:
    """not_a_detector: the note to give instead of pseudo-label counts when the model cannot label."""
    n = len(labels.per_image)
    warnings = [not_a_detector] if not_a_detector else []
    if n < s.warn_below_images:
        warnings.append(f"only {n} calibration images: SNPE's guide asks for 50-100 at least "
                        "(5-10 is a smoke test only)")
    elif n < s.advise_below_images:
        warnings.append(f"{n} calibration images: for detection SNPE's guide advises 200+ covering every class")
    largest = max((len(g) for g in groups), default=1)
    share = largest / n if n else 0.0
    if groups and share > s.dominant_share:
        warnings.append(f"one scene dominates: {largest} of {n} images ({share:.0%}) are near duplicates "
                        f"(e.g. {', '.join(groups[0][:3])}); the model would be calibrated to that scene")
    counts = table["status"].value_counts()
    missing, low = int(counts.get("MISSING", 0)), int(counts.get("LOW", 0))
    if missing or low:
        warnings.append(f"{plural(missing, 'class', 'classes')} never seen and {low} seen in fewer than "
                        f"{plural(s.min_images_per_class, 'image')}: collect more images of them")
    if labels.source == "pseudo" and not not_a_detector:
        warnings.append("no labels given: coverage counts the float model's own detections (pseudo-labels)")
    if labels.problems:
        warnings.append(f"{len(labels.problems)} malformed label lines were ignored (listed below)")
    need = table[table["status"] != "OK"].sort_values(["images", "class_id"])
    return CoverageSummary(
        images=n, label_source=labels.source, classes_ok=int(counts.get("OK", 0)), classes_low=low,
        classes_missing=missing, largest_scene_group=largest if groups else 1, largest_scene_share=round(share, 4),
        warnings=warnings, collect_more=[f"{r['class']} ({r['images']})" for _, r in need.iterrows()],
        images_without_objects=sorted(i for i, c in labels.per_image.items() if not c),
        duplicate_groups=groups, label_problems=[str(p) for p in labels.problems])


def coverage_text(s: CoverageSummary) -> str:
    lines = [f"qcal calibration coverage: {s.images} images, labels from {s.label_source}: "
             f"{s.classes_ok} classes OK, {s.classes_low} LOW, {s.classes_missing} MISSING"]
    lines += [f"  warning: {w}" for w in s.warnings]
    if s.collect_more:
        shown = ", ".join(s.collect_more[:15])
        more = f" and {len(s.collect_more) - 15} more" if len(s.collect_more) > 15 else ""
        lines.append(f"  collect more of: {shown}{more}")
    if s.images_without_objects:
        lines.append(f"  {len(s.images_without_objects)} images contributed no objects")
    return "\n".join(lines) + "\n"


def coverage_json(s: CoverageSummary) -> str:
    return json.dumps(asdict(s), indent=1) + "\n"


def images_per_class_chart(table: pd.DataFrame, threshold: int) -> str:
    shown = table[table["images"] > 0].sort_values("images", ascending=False)
    if shown.empty:
        shown = table.head(20)
    fig = Figure(figsize=(max(6, 0.28 * len(shown) + 2), 3.6))
    ax = fig.subplots()
    colours = ["#2a8a2a" if n >= threshold else "#e08a00" for n in shown["images"]]
    ax.bar(shown["class"], shown["images"], color=colours)
    ax.axhline(threshold, color="#c00", linestyle="--", label=f"threshold: {threshold} images")
    ax.set_ylabel("images containing the class")
    ax.set_title(f"Images per class ({len(shown)} classes seen of {len(table)})")
    ax.tick_params(axis="x", rotation=75, labelsize=8)
    ax.legend()
    return f"<img alt=\"images per class\" src=\"{png_data_uri(fig)}\">"


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
