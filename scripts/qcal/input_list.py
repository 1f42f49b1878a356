"""Aggregate per-image sidecars into SNPE's input list, an index table and a skipped-images report."""

from __future__ import annotations

import json
import os

from qcal.errors import QcalError
from qcal.files import tsv_text, write_text

INDEX_COLUMNS = ["image", "raw", "orig_width", "orig_height", "scale_x", "scale_y",
                 "resized_width", "resized_height", "pad_left", "pad_top", "pad_right", "pad_bottom",
                 "exif_orientation"]


def read_sidecars(pairs: list[tuple[str, str]]) -> list[tuple[str, dict]]:
    """(raw path, sidecar dict) for each (raw, meta) pair, sorted by the image's path."""
    loaded = []
    for raw, meta in pairs:
        with open(meta, encoding="utf-8") as f:
            loaded.append((raw, json.load(f)))
    return sorted(loaded, key=lambda item: item[1]["image"])


def list_line(raw: str, input_name: str | None, absolute: bool) -> str:
    path = os.path.abspath(raw) if absolute else raw
    if any(ch.isspace() for ch in path):
        # The image name was made safe by raw_stem; this is the results folder's own path.
        raise ValueError(f"SNPE input lists cannot hold paths with white space: {path!r}; "
                         "use relative paths (input_list.paths: relative) or move the project")
    return f"{input_name}:={path}" if input_name else path


def input_list_text(entries: list[tuple[str, dict]], input_name: str | None, absolute: bool) -> str:
    lines = [list_line(raw, input_name, absolute) for raw, meta in entries if meta["status"] == "ok"]
    return "".join(line + "\n" for line in lines)


def index_rows(entries: list[tuple[str, dict]]) -> list[list]:
    rows = []
    for raw, meta in entries:
        if meta["status"] == "ok":
            box = meta["letterbox"]
            rows.append([meta["image"], raw] + [box[c] for c in INDEX_COLUMNS[2:12]] + [meta["exif_orientation"]])
    return rows


def write_input_list(raws: list[str], metas: list[str], input_list: str, index: str,
                     input_name: str | None = None, absolute: bool = True) -> tuple[int, int]:
    """Write the list and the letterbox index of the decoded images; returns (listed, skipped)."""
    entries = read_sidecars(list(zip(raws, metas, strict=True)))
    bad = [[meta["image"], meta["error"]] for _, meta in entries if meta["status"] != "ok"]
    text = input_list_text(entries, input_name, absolute)
    if not text:
        reasons = "; ".join(f"{image}: {reason}" for image, reason in bad[:3])
        raise QcalError(f"no usable calibration image: all {len(entries)} were skipped ({reasons})")
    write_text(index, tsv_text(index_rows(entries), INDEX_COLUMNS))
    write_text(input_list, text)
    return len(entries) - len(bad), len(bad)


SKIPPED_COLUMNS = ["image", "set", "reason"]


WARNING_COLUMNS = ["image", "set", "warning"]


def image_report_rows(metas: dict[str, list[str]], unusable: dict[str, list[tuple[str, str]]]
                      ) -> tuple[list[list[str]], list[list[str]]]:
    """(skipped, warnings): every image left out, from the raw jobs' sidecars and from the scan at start,
    and every image used with a warning (a first frame of many, an EXIF tag that made no sense), per
    image set ("calibration", "evaluation"), sorted by image."""
    skipped, warned = [], []
    for image_set, paths in metas.items():
        for _, meta in read_sidecars([(path, path) for path in paths]):
            if meta["status"] != "ok":
                skipped.append([meta["image"], image_set, meta["error"]])
            warned += [[meta["image"], image_set, note] for note in meta.get("warnings", [])]
    for image_set, found in unusable.items():
        skipped += [[path, image_set, reason] for path, reason in found]
    return sorted(skipped), sorted(warned)


def write_image_reports(metas: dict[str, list[str]], unusable: dict[str, list[tuple[str, str]]], skipped_out: str,
                        warnings_out: str) -> tuple[int, int]:
    skipped, warned = image_report_rows(metas, unusable)
    write_text(skipped_out, tsv_text(skipped, SKIPPED_COLUMNS))
    write_text(warnings_out, tsv_text(warned, WARNING_COLUMNS))
    return len(skipped), len(warned)
