"""Calibration as map and reduce: each shard runs the float model over its raws once and keeps
mergeable per-tensor statistics (constant memory, whatever the image count); merging is exact."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from qcal.detections import DecoderSettings, decode, scale_boxes
from qcal.errors import QcalError
from qcal.files import write_atomic
from qcal.model import ModelInfo, float_tensors
from qcal.raws import InputSpec, RawItem
from qcal.runtime import cpu_session, model_output
from qcal.stats import TensorStats, load_stats, merge_all, save_stats


def observing_session(model: onnx.ModelProto, tensors: list[str], threads: int) -> ort.InferenceSession:
    """An ORT session whose outputs are the tensors to observe (plus the model's own outputs)."""
    observed = onnx.ModelProto()
    observed.CopyFrom(model)
    existing = {o.name for o in observed.graph.output}
    for name in tensors:
        if name not in existing:
            observed.graph.output.append(onnx.ValueInfoProto(name=name))
    # Every activation is an output here: ORT's arena would hold a second copy of all of them between runs
    # (YOLOv5s at 640: peak 1.50 GB with it, 1.32 GB without, at the same speed; bench_calibration.py).
    # Between runs the statistics threads need the cores ORT's threads would spin on (YOLOv3-tiny at 640,
    # 2 threads: 132 -> 119 ms per image without spinning).
    return cpu_session(observed.SerializeToString(), threads, arena=False, spinning=False)


@dataclass(frozen=True)
class Observer:
    """What observing a model takes: its observing session and which outputs feed which statistics."""
    session: ort.InferenceSession
    names: list[str]                  # the session's outputs, in order
    tensors: list[str]                # every float activation, in graph order
    derived: dict[str, tuple[str, list[str]]]
    observed: frozenset[str]          # the outputs whose values update statistics
    model_outputs: list[str]


_OBSERVERS: dict[tuple[bytes, int], Observer] = {}
_OBSERVERS_LOCK = threading.Lock()


def observer(model_path: str | Path, threads: int) -> Observer:
    """The Observer of a model file. Calibration shards run as threads of one process (both profiles), so
    they share one instead of each spending 0.25 s building its session (YOLOv3-tiny at 640). Keyed on
    the file's content: a changed model gets a new one. Only the latest is kept, bounding memory."""
    data = Path(model_path).read_bytes()
    key = (hashlib.blake2b(data, digest_size=16).digest(), threads)
    with _OBSERVERS_LOCK:
        if key not in _OBSERVERS:
            _OBSERVERS.clear()
            model = onnx.load_from_string(data)
            tensors = float_tensors(model)
            session = observing_session(model, tensors, threads)
            names = [o.name for o in session.get_outputs()]
            derived = derived_tensors(model, tensors)
            observed = frozenset(name for name in names if name in tensors and name not in derived)
            _OBSERVERS[key] = Observer(session, names, tensors, derived, observed,
                                       [o.name for o in model.graph.output])
        return _OBSERVERS[key]


def calibrate(model_path: str | Path, raws: list[str], spec: InputSpec, threads: int = 1, max_bins: int = 4096,
              on_output: Callable[[int, np.ndarray], None] | None = None) -> tuple[dict[str, TensorStats], dict]:
    """Statistics of every float activation over the given raws (the decode tail too, for a 16-bit
    tail). Memory holds one image's activations and one fixed-size histogram per tensor.
    on_output(i, output) sees the model's first output for raws[i]: the float model's detections come
    from this same pass, not a second one."""
    seen = observer(model_path, threads)
    session, names, observed = seen.session, seen.names, seen.observed
    stats = {name: TensorStats(max_bins=max_bins) for name in seen.tensors}

    def observe(x: np.ndarray, pool: ThreadPoolExecutor | None) -> dict[str, np.ndarray]:
        if spec.input_name in stats:
            stats[spec.input_name].update(x)
        # session.run copies ORT's buffers; without the arena, run_with_ort_values views were no faster
        # (YOLOv3-tiny at 640, 2 threads: 77 ms per image against 71; benchmarks/DECISIONS.md).
        values = dict(zip(names, session.run(names, {spec.input_name: x})))
        # largest first, so that the threads finish together; each tensor's statistics have one writer
        work = sorted((name for name in values if name in observed), key=lambda name: -values[name].size)
        if pool is None:
            for name in work:
                stats[name].update(values[name])
        else:  # the histogram kernel and numpy's reductions release the GIL: threads share the updates
            list(pool.map(lambda name: stats[name].update(values[name]), work))
        return values

    started = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="qcal-stats") if threads > 1 else nullcontext() as pool:
        for i, raw in enumerate(raws):
            values = observe(spec.read(raw), pool)
            if on_output is not None:
                on_output(i, model_output([values[name] for name in seen.model_outputs]))
    fill_derived(stats, seen.tensors, seen.derived)
    meta = {"images": len(raws), "tensors": len(seen.tensors), "seconds": round(time.perf_counter() - started, 3)}
    return stats, meta


# Ops whose output holds exactly the input's values (the statistics depend only on the values).
SAME_VALUES = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def derived_tensors(model: onnx.ModelProto, tensors: list[str]) -> dict[str, tuple[str, list[str]]]:
    """{output: ("same" | "merge", sources)} for tensors whose statistics follow exactly from their
    inputs' (a Concat's are the exact merge of its inputs'), so they need not be observed."""
    wanted = set(tensors)
    derived: dict[str, tuple[str, list[str]]] = {}
    for node in model.graph.node:
        if not node.output or node.output[0] not in wanted:
            continue
        if node.op_type in SAME_VALUES and node.input and node.input[0] in wanted:
            derived[node.output[0]] = ("same", [node.input[0]])
        elif node.op_type == "Concat" and node.input and all(i in wanted for i in node.input):
            derived[node.output[0]] = ("merge", list(node.input))
    return derived


def fill_derived(stats: dict[str, TensorStats], tensors: list[str],
                 derived: dict[str, tuple[str, list[str]]]) -> None:
    for name in tensors:  # graph order: a tensor's sources are filled before it
        if name in derived:
            _, sources = derived[name]
            merged = stats[sources[0]].copy()
            for source in sources[1:]:
                merged = merged.merge(stats[source])
            stats[name] = merged


DETECTION_COLUMNS = ["image", "class", "score", "x1", "y1", "x2", "y2"]


def detection_rows(image: str, output: np.ndarray, letterbox: dict, decoder: DecoderSettings) -> list[list]:
    """The float model's detections for one image, boxes in original image pixels."""
    dets = decode(output, conf_threshold=decoder.conf_threshold, iou_threshold=decoder.iou_threshold)
    boxes = scale_boxes(dets.boxes, letterbox)
    return [[image, int(c), round(float(s), 5), *(round(float(v), 2) for v in b)]
            for c, s, b in zip(dets.classes, dets.scores, boxes)]


def write_detections(path: str | Path, rows: list[list]) -> None:
    lines = ["\t".join(DETECTION_COLUMNS)] + ["\t".join(map(str, r)) for r in rows]
    write_atomic(path, ("\n".join(lines) + "\n").encode())


def merge_shards(paths: list[str | Path]) -> tuple[dict[str, TensorStats], dict]:
    parts, images = [], 0
    for path in paths:
        stats, meta = load_stats(path)
        parts.append(stats)
        images += meta["images"]
    return merge_all(parts), {"images": images, "shards": len(paths)}


def calibrate_shard(model: str | Path, info: ModelInfo, items: list[RawItem], spec: InputSpec, threads: int,
                    max_bins: int, decoder: DecoderSettings, out_stats: str | Path, out_detections: str | Path) -> dict:
    """One calibration job: statistics of its images and, for a detector, the float model's detections
    on them (the pseudo-labels of the coverage report) from the same forward pass."""
    rows: list[list] = []

    def keep_detections(i: int, output: np.ndarray) -> None:
        rows.extend(detection_rows(items[i].image, output, items[i].letterbox, decoder))

    stats, meta = calibrate(model, [item.raw for item in items], spec, threads, max_bins,
                            keep_detections if info.is_detector else None)
    save_stats(out_stats, stats, meta)
    write_detections(out_detections, rows)
    return meta


def merge_shard_files(paths: list[str | Path], out: str | Path) -> dict:
    stats, meta = merge_shards(paths)
    if meta["images"] == 0:
        raise QcalError("no calibration image reached the model: every image was skipped or held out")
    save_stats(out, stats, meta)
    return meta
