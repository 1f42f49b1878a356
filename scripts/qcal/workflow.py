"""The one module that knows Snakemake: each rule's `run:` block calls one function here with the job's
input, output, params, threads and log, and the function turns them into typed calls of the engine.

Rules run in Snakemake's own process (profiles set force-use-threads): no Python start per job, which
is most of a per-image job's cost. So these functions keep no global state and touch no process-wide
setting (what this module sets at import is for the whole process, on purpose), and each writes its own
log."""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from qcal.cpu import usable_cores
from qcal.errors import QcalError
from qcal.files import write_json, write_text

# Libraries log through the root logger (ONNX Runtime's quantizer warns on every call); with no handler
# there, Python's logging.warning() installs a stderr handler that would echo every Snakemake log line
# again, since jobs share Snakemake's process. A root handler that drops records prevents that.
logging.getLogger().addHandler(logging.NullHandler())


class CoreSlots:
    """The cores of this machine, shared by the jobs that run as threads of one Snakemake process.

    The profiles run every job in Snakemake's process (--force-use-threads), so `-j8` on a 2-core machine
    runs 8 calibration shards at once: each holds a whole image's activations and they fight for the
    cores. A job takes as many slots as it has threads, and waits while they are taken (200 images,
    2 cores, -j8, with the arena cap below: calibration 23.6 s -> 20.5 s, peak memory 4.9 GB -> 2.5 GB;
    -j2 gives 19.0 s). Jobs in processes of their own (SLURM) each see their own slots."""

    def __init__(self, total: int) -> None:
        self.total, self.free = total, total
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def taken(self, count: int) -> Iterator[None]:
        count = max(1, min(count, self.total))  # a job wanting more threads than cores runs alone
        with self._changed:
            self._changed.wait_for(lambda: self.free >= count)
            self.free -= count
        try:
            yield
        finally:
            with self._changed:
                self.free += count
                self._changed.notify_all()


CORES = CoreSlots(usable_cores())


def limit_malloc_arenas(count: int) -> None:
    """glibc gives each thread that allocates its own malloc arena and keeps freed memory there: with
    -j8 every job thread in turn grows one to a whole image's activations, and the process keeps 8 of
    them (200 images, 2 cores: 4.0 GB peak and 6.6 s of page faults, against 2.7 GB and 2.5 s with
    arenas capped at the core count). No effect on other C libraries."""
    import ctypes
    import ctypes.util

    M_ARENA_MAX = -8  # glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, count)
    except (OSError, AttributeError):
        pass


def cancel_timers_at_exit() -> threading.Thread:
    """Cancel the timers Snakemake's job rate limiter leaves behind, as soon as the main thread ends.
    Each scheduling round starts a non-daemon threading.Timer of one timespan (profiles set 10 s, see
    profiles/default), and Python waits for such timers before it exits: without this, every run,
    whichever way it ends (hooks run or not, as inside SLURM jobs), would wait out the last one. The
    daemon thread waits on the main thread, so it costs nothing meanwhile."""

    def cancel_when_main_ends() -> None:
        threading.main_thread().join()  # returns once interpreter shutdown has begun
        for timer in threading.enumerate():
            if isinstance(timer, threading.Timer):
                timer.cancel()

    watcher = threading.Thread(target=cancel_when_main_ends, name="qcal-cancel-timers", daemon=True)
    watcher.start()
    return watcher


limit_malloc_arenas(CORES.total)
cancel_timers_at_exit()


def signature_computed_once(func):
    """Decorator for input and params functions of per-image rules. Snakemake inspects such a function's
    signature on every call, about 10 times per job (inspect.signature: 12% of a 20,000-image dry run);
    a callable's __signature__ (PEP 362) answers those calls without recomputing it."""
    func.__signature__ = inspect.signature(func)
    return func


class JobError(QcalError):
    """A job's clear failure: the message names the file and the problem (Snakemake prints it)."""


@contextlib.contextmanager
def job(log: str | os.PathLike) -> Iterator[list[str]]:
    """Run a job body: lines appended to the yielded list go to the log; a QcalError or a full disk
    becomes a one-line JobError (also written to the log), anything else keeps its traceback."""
    lines: list[str] = []
    try:
        yield lines
    except QcalError as err:
        _write_log(log, lines + [f"qcal: {err}"])
        raise JobError(str(err)) from None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            message = f"no space left on the device writing {err.filename or 'results'}: free some or move results/"
            _write_log(log, lines + [f"qcal: {message}"])
            raise JobError(message) from None
        raise
    write_text(log, "".join(line + "\n" for line in lines))


def _write_log(log: str | os.PathLike, lines: list[str]) -> None:
    """The log of a failing job, if it can still be written (on a full disk it cannot)."""
    try:
        write_text(log, "\n".join(lines) + "\n")
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------
# Typed hand-offs from params (plain dicts, so Snakemake tracks them) to the engine


def input_spec(params, info):
    from qcal.preprocess import resolve_profile
    from qcal.raws import InputSpec

    return InputSpec(resolve_profile(params.profile, json.loads(params.profile_settings)), info.input_name, info.layout)


def decoder_settings(section: dict):
    from qcal.detections import DecoderSettings

    return DecoderSettings(section["conf_threshold"], section["iou_threshold"])


def quantize_options(section: dict, runtime: str = "cpu"):
    """The quantization section in the engine's terms (bits, reduce_range decided for this machine)."""
    from qcal.cpu import auto_weight_bits
    from qcal.quantize import QuantizeOptions

    if runtime != "cpu":
        reduce_range, reason = False, f"the {runtime} runtime takes 8-bit weights"
    elif section["reduce_range"] == "auto":
        bits, reason = auto_weight_bits()
        reduce_range = bits == 7
    else:
        reduce_range, reason = bool(section["reduce_range"]), "set in the config"
    return QuantizeOptions(method=section["method"], percentile=section["percentile"],
                           activation_bits=16 if section["activations"] == "int16" else 8,
                           per_channel=section["per_channel"], reduce_range=reduce_range, weight_bits_reason=reason,
                           tail=section["tail"], exclude_nodes=list(section["exclude_nodes"]),
                           exclude_op_types=list(section["exclude_op_types"]))


# --------------------------------------------------------------------------------------------------
# Jobs, in data-flow order


def fetch_default_images(input, output, params, log) -> None:
    from qcal.fetch import fetch_images

    with job(log[0]) as lines:
        lines += [str(p) for p in fetch_images(input.manifest, output[0], params.cache)]


def fetch_default_model(input, output, params, wildcards, log) -> None:
    from qcal.default_model import fetch_default_model as fetch

    with job(log[0]) as lines:
        fetch(output[0], int(wildcards.height), int(wildcards.width), params.cache)
        lines.append(f"wrote {output[0]}")


def raw(output, params, log) -> None:
    from qcal.preprocess import image_to_raw, resolve_profile

    with job(log[0]) as lines:
        image, _ = params.source  # (path, content digest); the path is also the declared input, when it can be
        profile = resolve_profile(params.profile, json.loads(params.profile_settings))
        image_id = os.path.relpath(image, params.root)
        result = image_to_raw(image, output.raw, output.meta, profile, params.on_bad_image, image_id)
        if result.status != "ok":
            lines.append(f"qcal: skipped image {image}: {result.error}")
        lines += [f"qcal: warning: {image}: {note}" for note in result.warnings]


def input_list(input, output, params, log) -> None:
    from qcal.input_list import write_input_list

    with job(log[0]) as lines:
        listed, skipped = write_input_list(list(input.raws), list(input.metas), output.input_list, output.index,
                                           params.input_name, params.absolute)
        lines.append(f"listed {listed} raw tensors, skipped {skipped} images")


def image_reports(input, output, params, log) -> None:
    from qcal.input_list import write_image_reports

    with job(log[0]) as lines:
        skipped, warned = write_image_reports(
            {"calibration": list(input.calibration), "evaluation": list(input.evaluation)},
            {"calibration": params.unusable_calibration, "evaluation": params.unusable_evaluation},
            output.skipped, output.warnings)
        lines.append(f"{skipped} images left out, {warned} warnings")


def prepare_model(input, output, params, log) -> None:
    from qcal.model import prepare_file

    with job(log[0]) as lines:
        info = prepare_file(input.model, output.model, output.info, params.input_name, params.height, params.width,
                            params.split_outputs)
        lines.append(f"input {info.input_name} {info.input_shape} {info.layout}; decode tail: "
                     f"{len(info.tail_nodes)} nodes after {info.head_nodes}")


def calibrate_shard(input, output, params, threads, log) -> None:
    from qcal.calibrate import calibrate_shard as calibrate
    from qcal.model import ModelInfo
    from qcal.raws import usable_items

    with job(log[0]) as lines, CORES.taken(threads):
        info = ModelInfo.read(input.info)
        items = usable_items(list(input.raws), list(input.metas))
        meta = calibrate(input.model, info, items, input_spec(params, info), threads, params.histogram_bins,
                         decoder_settings(params.decoder), output.stats, output.detections)
        lines.append(json.dumps(meta))


def merge_calibration(input, output, log) -> None:
    from qcal.calibrate import merge_shard_files

    with job(log[0]) as lines:
        lines.append(json.dumps(merge_shard_files(list(input), output[0])))


def ranges(input, output, params, log) -> None:
    from qcal.model import ModelInfo
    from qcal.quantize import activation_encodings, write_ort_ranges
    from qcal.stats import load_stats

    with job(log[0]) as lines:
        options = quantize_options(params.quantization)
        stats, _ = load_stats(input.stats)
        info = ModelInfo.read(input.info)
        encodings = activation_encodings(stats, options, info.tail_tensors, info.preactivations)
        write_ort_ranges(encodings, output[0])
        lines.append(f"{len(encodings)} activation ranges by {options.method}")


def quantize_model(input, output, params, threads, log) -> None:
    import onnx

    from qcal.encodings import encodings_from_qdq, encodings_v1
    from qcal.model import ModelInfo
    from qcal.quantize import int8_only_violations, quantize_model as quantize, summary
    from qcal.report.quantize import quantize_text, steps_text
    from qcal.stats import load_stats

    with job(log[0]) as lines, CORES.taken(threads):
        options = quantize_options(params.quantization, params.target["runtime"])
        info = ModelInfo.read(input.info)
        max_drop = params.search["max_drop"]
        stats, stats_meta = load_stats(input.stats)
        search_note, steps = "", None
        if max_drop is None:
            search_note = ("  accuracy search: off (search.max_drop is not set)\n" if params.search["precision"] else
                           f"  accuracy search: not possible ({params.target['runtime']}, {options.activation_bits}-bit "
                           "activations: no layer can leave int8 for something the target runs)\n")
        elif not input.eval_raws:
            search_note = ("  accuracy search: skipped, no evaluation image is left for it (it takes "
                           "evaluation.search_share of them; set evaluation.images or a larger holdout)\n")
        if search_note:
            quantize(input.model, input.ranges, output.model, options, info.tail_nodes, info.tail_tensors)
        else:
            from qcal.raws import usable_items
            from qcal.search.loop import SearchSettings, search
            from qcal.search.steps import final_agreement

            evaluation = usable_items(list(input.eval_raws), list(input.eval_metas))
            seen = {item.raw for item in evaluation}  # evaluation on calibration images lists them twice
            calibration = [item for item in usable_items(list(input.calibration_raws), list(input.calibration_metas))
                           if item.raw not in seen]
            settings = SearchSettings(max_drop, params.search["precision"], params.search["max_steps"],
                                      params.search["max_minutes"], params.search["backend"],
                                      params.search["soc_model"])
            steps = search(input.model, stats, output.model, options, info, evaluation + calibration,
                           input_spec(params, info), decoder_settings(params.decoder), settings, threads,
                           progress=lambda line: print(f"qcal search: {line}", flush=True))
            where = "ONNX Runtime's CPU" if settings.backend == "cpu" else \
                f"the HTP simulator (soc_model {settings.soc_model})"
            search_note = (f"  accuracy search on {len(evaluation)} evaluation and {len(calibration)} calibration "
                           f"images, scored on {where}\n" + steps_text(steps, max_drop))
        quantized = onnx.load(output.model)
        if params.target["int8_only"]:
            problems = int8_only_violations(quantized)
            if problems:
                raise QcalError(f"the {params.target['runtime']} target runs 8-bit models only, but the quantized model "
                                f"has {len(problems)} nodes it cannot run: {', '.join(problems[:8])}; remove them from "
                                "quantization.exclude_nodes / exclude_op_types")
        encodings = encodings_from_qdq(quantized)
        write_json(output.encodings, encodings)
        write_json(output.encodings_v1, encodings_v1(encodings))
        result = summary(onnx.load(input.model), quantized, output.model, input.model, options, info.tail,
                         stats_meta, encodings, info.output_shape)
        result["target"] = params.target
        result["search"] = ({"max_drop": max_drop, "met": 1 - final_agreement(steps) <= max_drop,
                             "agreement_in_sample": final_agreement(steps),
                             "images": {"evaluation": len(evaluation), "calibration": len(calibration)},
                             "steps": [vars(step) for step in steps]} if steps else None)
        result["nonfinite_activations"] = {name: tensor.nonfinite_count for name, tensor in stats.items()
                                           if tensor.nonfinite_count}
        write_json(output.summary, result)
        text = quantize_text(result) + search_note
        write_text(output.text, text)
        lines.append(text.rstrip("\n"))


def weights_dequantized(input, output, log) -> None:
    import onnx

    from qcal.files import atomic_path
    from qcal.quantize import weights_dequantized as dequantize

    with job(log[0]) as lines:
        model = dequantize(onnx.load(input[0]))
        with atomic_path(output[0]) as tmp:
            onnx.save(model, str(tmp))
        lines.append(f"float model with int8-rounded weights: {len(model.graph.node)} nodes")


def snpe_dlc(input, output, params, log) -> None:
    from qcal.snpe import commands, find_tools, run

    with job(log[0]):
        converter, quantizer = find_tools()
        run(commands(converter, quantizer, input.model, input.encodings, input.input_list, output.float_dlc,
                     output.dlc, params.activation_bits, params.per_channel, params.native_uint8), log[0] + ".tools")
        if not os.path.isfile(output.dlc):
            raise QcalError(f"{Path(quantizer).name} finished but wrote no {output.dlc}; see {log[0]}.tools")


def coverage(input, output, params, log) -> None:
    from qcal.labels import load_labels
    from qcal.model import ModelInfo
    from qcal.names import class_names
    from qcal.raws import read_sidecar
    from qcal.report.coverage import (NOT_A_DETECTOR, CoverageSettings, coverage_html, coverage_json, coverage_table,
                                      coverage_text, near_duplicate_groups, summarize)

    with job(log[0]) as lines:
        info = ModelInfo.read(input.info)
        names = class_names(params.labels["names"], info.class_names)
        note = ""
        if params.source == "pseudo" and not info.is_detector:
            names, note = [], NOT_A_DETECTOR.format(shape=info.output_shape)
        sidecars = [read_sidecar(m) for m in input.metas]
        images = sorted(s["image"] for s in sidecars if s["status"] == "ok")
        hashes = {s["image"]: int(s["dhash"], 16) for s in sidecars if s["status"] == "ok"}
        labels = load_labels(params.source, images, names, params.labels["yolo_dir"], params.labels["coco_json"],
                             list(input.detections))
        settings = CoverageSettings(**params.settings)
        table = coverage_table(labels, names, settings.min_images_per_class)
        groups = near_duplicate_groups(hashes, settings.duplicate_distance)
        result = summarize(table, labels, groups, settings, note)
        write_text(output.tsv, table.to_csv(sep="\t", index=False))
        write_text(output.json, coverage_json(result))
        write_text(output.html, coverage_html(table, result, settings.min_images_per_class))
        text = coverage_text(result)
        write_text(output.text, text)
        lines.append(text.rstrip("\n"))


def htp_prepare(input, output, params, log) -> None:
    from qcal.htp import check_on_htp

    with job(log[0]) as lines:
        result = check_on_htp(input.model, params.soc_model, output.context)
        write_json(output.check, vars(result))
        if not result.ok:
            shown = ", ".join(result.cpu_nodes[:10]) + (f" and {len(result.cpu_nodes) - 10} more"
                                                        if len(result.cpu_nodes) > 10 else "")
            raise QcalError(f"{len(result.cpu_nodes)} nodes of {input.model} would leave the HTP of soc_model "
                            f"{params.soc_model} for the CPU: {shown or result.error}")
        lines.append(f"every node runs on the HTP (soc_model {params.soc_model}): {result.htp_nodes} nodes, and "
                     f"{result.folded_nodes} more that ONNX Runtime folded away first; context binary "
                     f"{os.path.getsize(output.context) / 1e6:.1f} MB; prepared in {result.seconds} s")


def evaluate_accuracy(input, output, params, threads, log) -> None:
    import tempfile

    import pandas as pd

    from qcal.evaluate import Evaluation, cpu_outputs, score
    from qcal.htp import outputs_on_htp
    from qcal.labels import load_labels
    from qcal.model import ModelInfo
    from qcal.names import class_names
    from qcal.raws import usable_items
    from qcal.report.accuracy import accuracy_html, accuracy_table, accuracy_text, headline_backend, overall

    with job(log[0]) as lines, CORES.taken(threads):
        info = ModelInfo.read(input.info)
        items = usable_items(list(input.raws), list(input.metas))
        if not items:
            raise QcalError("no evaluation image could be used (every one was skipped): see "
                            "results/reports/skipped_images.tsv, or set evaluation.images")
        names = class_names(params.labels["names"], info.class_names)
        labels = None
        if params.source != "pseudo":
            labels = load_labels(params.source, [item.image for item in items], names, params.labels["yolo_dir"],
                                 params.labels["coco_json"])
        spec = input_spec(params, info)
        decoder = decoder_settings(params.decoder)
        search = json.loads(Path(input.summary).read_text(encoding="utf-8")).get("search")
        with tempfile.TemporaryDirectory(prefix="qcal-evaluate-", dir=os.path.dirname(output.json)) as tmp:
            reference, float_ms = cpu_outputs(input.float_model, items, spec, Path(tmp) / "float.npy", threads)
            quantized, quant_ms = cpu_outputs(input.quant_model, items, spec, Path(tmp) / "cpu.npy", threads)
            evaluation = Evaluation(len(items), info.is_detector, None,
                                    latency_ms={"float": float_ms, "quantized": quant_ms})
            evaluation.backends["cpu"], evaluation.float_vs_labels = score(reference, quantized, items, decoder, labels,
                                                                           info.is_detector)
            spec_json = spec.to_json()
            for soc_name, soc_model in params.htp_socs:
                lines.append(f"running the quantized model on the HTP simulator ({soc_name}) over {len(items)} images")
                outputs, timings = outputs_on_htp(input.quant_model, soc_model, [item.raw for item in items], spec_json,
                                                  Path(tmp) / f"htp-{soc_model}.npy")
                evaluation.backends[f"htp {soc_name}"], _ = score(reference, outputs, items, decoder, labels,
                                                                  info.is_detector)
                evaluation.seconds_per_image[f"htp {soc_name}"] = timings["seconds_per_image"]
                del outputs
            del reference, quantized
        runtime = params.target["runtime"]
        table = accuracy_table(evaluation, pd.read_csv(input.coverage, sep="\t"), params.flag_drop,
                               headline_backend(evaluation, runtime))
        figures = overall(evaluation, input.float_model, input.quant_model, runtime, search)
        text = accuracy_text(figures, table)
        write_text(output.tsv, table.to_csv(sep="\t", index=False))
        write_json(output.json, figures)
        write_text(output.html, accuracy_html(table, figures, text, params.flag_drop, search))
        write_text(output.text, text)
        lines.append(text.rstrip("\n"))


# --------------------------------------------------------------------------------------------------
# Run start and end


def remove_stale_temporaries(results: str | os.PathLike) -> int:
    """Delete temporary files a killed job left behind (qcal.files.atomic_path names them .qcal-*.tmp);
    Snakemake's lock guarantees no job of another run is writing them."""
    removed = 0
    for path in Path(results).rglob(".qcal-*.tmp"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def final_summary(results: str | os.PathLike, socs: list[str] = ()) -> str:
    """The console summary at the end of a run: coverage, quantization and, when it is as new as the
    quantized model (the accuracy report was part of this run's targets), accuracy; skipped images."""
    results = Path(results)
    parts = []
    for name in ("reports/coverage.txt", "quantize_summary.txt"):
        if (results / name).is_file():
            parts.append((results / name).read_text(encoding="utf-8"))
    accuracy, model = results / "reports/accuracy.txt", results / "model_quantized.onnx"
    if accuracy.is_file() and model.is_file() and accuracy.stat().st_mtime_ns >= model.stat().st_mtime_ns:
        parts.append(accuracy.read_text(encoding="utf-8"))
    for check in [results / "htp" / soc / "check.json" for soc in socs if (results / "htp" / soc / "check.json").is_file()]:
        found = json.loads(check.read_text(encoding="utf-8"))
        context = check.with_name("model_ctx.onnx")
        prepared = f"; context binary {context.stat().st_size / 1e6:.1f} MB ({context})" if context.is_file() else ""
        verdict = (f"every node runs on the HTP ({found['htp_nodes']} nodes){prepared}" if found["ok"] else
                   f"{len(found['cpu_nodes'])} nodes would fall back to the CPU")
        parts.append(f"qcal HTP check, {check.parent.name} (soc_model {found['soc_model']}): {verdict}\n")
    for name, what in (("skipped_images.tsv", "skipped"), ("image_warnings.tsv", "used with a warning")):
        report = results / "reports" / name
        rows = report.read_text(encoding="utf-8").splitlines()[1:] if report.is_file() else []
        if rows:
            shown = "; ".join(row.replace("\t", " (", 1).replace("\t", "): ", 1) for row in rows[:3])
            more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
            parts.append(f"qcal: {len(rows)} images {what} (results/reports/{name}): {shown}{more}\n")
    return "".join(parts)
