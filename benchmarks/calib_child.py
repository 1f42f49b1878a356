"""One side of bench_calibration.py, run in a fresh process so its wall time, CPU and peak RSS are its own.

    python benchmarks/calib_child.py qcal|ort-minmax|ort-percentile --model PREPARED.onnx \
        --raws LIST.txt --count N --out DIR [--threads T] [--layout NCHW] [--input images]

qcal            qcal.calibrate.calibrate() over the first N raws (mergeable histograms of every float
                tensor), then save_stats() -- exactly what one calibrate_shard job does;
ort-minmax      onnxruntime.quantization.quantize_static(CalibrationMethod.MinMax), QDQ, per_channel,
                QUInt8 activations / QInt8 weights, fed by a CalibrationDataReader that reads the same raws
                (NHWC float32 -> NCHW float32 [1,3,H,W]) one at a time;
ort-percentile  the same with CalibrationMethod.Percentile.

The last line printed is a JSON object with the phases timed inside the process (imports, set-up, the
per-image loop, the rest); on an exception it prints {"status": "failed", ...} and exits with 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback

T0 = time.perf_counter()


def read_nchw(path: str, height: int, width: int, layout: str):
    import numpy as np

    x = np.fromfile(path, dtype=np.float32).reshape(height, width, 3)  # qcal raws are NHWC
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


def run_qcal(args, raws: list[str], timings: dict) -> dict:
    from qcal.calibrate import calibrate
    from qcal.preprocess import resolve_profile
    from qcal.raws import InputSpec
    from qcal.stats import save_stats

    timings["imports"] = time.perf_counter() - T0
    spec = InputSpec(resolve_profile("yolov5", {"height": args.height, "width": args.width}), args.input, args.layout)
    stats, meta = calibrate(args.model, raws, spec, threads=args.threads, max_bins=args.bins)
    t = time.perf_counter()
    save_stats(os.path.join(args.out, "stats.npz"), stats, meta)
    timings["save"] = time.perf_counter() - t
    timings["loop"] = meta["seconds"]  # calibrate()'s own timer: the per-image loop only
    return {"tensors": meta["tensors"], "images": meta["images"]}


def run_ort(args, raws: list[str], timings: dict, method: str) -> dict:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    timings["imports"] = time.perf_counter() - T0
    logging.getLogger().setLevel(logging.ERROR)  # ORT's "please run pre-processing" warnings

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0
            self.first = self.last = None

        def get_next(self):
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            if self.i >= len(raws):
                self.last = self.last or now
                return None
            x = read_nchw(raws[self.i], args.height, args.width, args.layout)
            self.i += 1
            return {args.input: x}

    reader = Reader()
    out = os.path.join(args.out, "model_quantized.onnx")
    start = time.perf_counter()
    quantize_static(args.model, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))
    end = time.perf_counter()
    # before the first get_next: model load, shape inference, graph augmentation, session creation;
    # loop: every session.run over the images; after: range computation (for Percentile: building the
    # histograms of every stored output) and the QDQ rewrite.
    timings["setup"] = reader.first - start
    timings["loop"] = reader.last - reader.first
    timings["after_loop"] = end - reader.last
    return {"images": reader.i, "quantized_bytes": os.path.getsize(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tool", choices=["qcal", "ort-minmax", "ort-percentile"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--raws", required=True, help="file with one raw path per line")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True, help="folder for the tool's output")
    parser.add_argument("--threads", type=int, default=1, help="qcal: ONNX Runtime intra-op threads")
    parser.add_argument("--bins", type=int, default=4096, help="qcal: histogram_bins")
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--layout", default="NCHW", help="the model's input layout")
    parser.add_argument("--input", default="images", help="the model's input name")
    args = parser.parse_args(argv)
    with open(args.raws) as f:
        raws = [line.rstrip("\n") for line in f if line.strip()][:args.count]
    if len(raws) != args.count:
        sys.exit(f"only {len(raws)} raws listed, {args.count} asked for")
    os.makedirs(args.out, exist_ok=True)
    tempfile.tempdir = args.out  # ORT writes its augmented model to a temp dir: keep it in ours
    timings: dict[str, float] = {}
    try:
        if args.tool.startswith("qcal"):
            info = run_qcal(args, raws, timings)
        else:
            info = run_ort(args, raws, timings, "MinMax" if args.tool == "ort-minmax" else "Percentile")
    except BaseException as err:  # MemoryError under RLIMIT_AS, ORT's allocation failures, ...
        traceback.print_exc()
        print(json.dumps({"status": "failed", "error": f"{type(err).__name__}: {str(err)[:300]}"}))
        return 3
    timings["total_inside"] = time.perf_counter() - T0
    print(json.dumps({"status": "ok", **info, "timings": {k: round(v, 4) for k, v in timings.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
