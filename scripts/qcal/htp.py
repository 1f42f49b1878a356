"""Qualcomm's HTP through onnxruntime-qnn: does every node of the quantized model run on the HTP, the
offline-prepared context binary a device loads (SNPE 2's snpe-dlc-graph-prepare step), and the model's
outputs as the HTP computes them. On x86 the wheel runs QNN's HTP simulator (about 6 s per 640x640
image for w8a8, 11 s for w8a16, one core).

Every HTP session lives in a child process (`python -m qcal.htp ...`) with a time limit: the QNN
execution provider can crash its process or stall in graph preparation (see qcal.runtime)."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from qcal.errors import QcalError
from qcal.files import atomic_path

RESULT = "QCAL_HTP_RESULT "
_UNSUPPORTED = re.compile(r"name: ([^,]+), type: (\w+)")
_ORT_SUFFIX = re.compile(r"(_token_\d+|/duplicated)+$")  # ORT's NHWC layout pass renames nodes this way


class HtpError(QcalError):
    pass


@dataclass
class HtpCheck:
    soc_model: str
    ok: bool                 # a session with CPU fallback disabled was created: every node runs on the HTP
    htp_nodes: int           # of the model's own nodes, those the QNN EP runs
    cpu_nodes: list[str]     # the model's nodes the QNN EP does not take
    seconds: float
    error: str = ""
    folded_nodes: int = 0    # the model's nodes ONNX Runtime's graph optimizations removed before assignment


# --------------------------------------------------------------------------------------------------
# What the child process does


@contextlib.contextmanager
def _captured_ort_log() -> Iterator[list[str]]:
    """ORT's log messages while the block runs (the QNN EP names unsupported nodes there, and only
    when fallback is disabled)."""
    import onnxruntime as ort

    lines: list[str] = []
    ort.set_default_logger_callback(lambda severity, category, logid, where, message: lines.append(message), 2)
    try:
        yield lines
    finally:
        ort.set_default_logger_callback(None, 3)


def _model_nodes(model: str | Path) -> list[str]:
    return [n.name for n in onnx.load(str(model), load_external_data=False).graph.node]


def check(model: str | Path, soc_model: str, context_out: str | Path | None = None) -> HtpCheck:
    """Create a fallback-free HTP session for the model and say which of its nodes the HTP takes. With
    context_out, the same graph preparation also writes the EPContext model (QNN's context binary for
    the SoC) there, only when every node runs on the HTP. One preparation instead of two: on YOLOv3-tiny
    w8a16 it takes 0.56 s, against 0.56 s to check and 0.51 s to compile separately, and both context
    binaries compute bit-identical outputs."""
    if context_out is None:
        return _session_check(model, soc_model, {})
    try:
        with atomic_path(context_out) as tmp:
            tmp.unlink()  # QNN refuses to write over an existing file
            result = _session_check(model, soc_model, {"ep.context_enable": "1", "ep.context_file_path": str(tmp),
                                                       "ep.context_embed_mode": "1"})
            if not result.ok:
                raise _Rejected(result)  # leaves the block failed: atomic_path keeps nothing
        return result
    except _Rejected as rejected:
        return rejected.result


class _Rejected(Exception):
    def __init__(self, result: HtpCheck):
        super().__init__(result.error)
        self.result = result


def _session_check(model: str | Path, soc_model: str, config: dict[str, str]) -> HtpCheck:
    from qcal.runtime import QNN_EP, htp_session

    nodes = _model_nodes(model)
    started = time.perf_counter()
    with _captured_ort_log() as log:
        try:
            session = htp_session(model, soc_model, config={"session.record_ep_graph_assignment_info": "1", **config})
        except Exception as err:  # ORT raises its own exception types for every failure
            unsupported = list(dict.fromkeys(name for line in log if "Unsupported nodes in QNN EP" in line
                                             for name, _ in _UNSUPPORTED.findall(line)))
            rejected = {_ORT_SUFFIX.sub("", n) for n in unsupported}
            return HtpCheck(soc_model, False, len([n for n in nodes if n not in rejected]),
                            [n for n in nodes if n in rejected] or unsupported,
                            round(time.perf_counter() - started, 3), str(err).strip().splitlines()[0][:500])
    on_qnn = {_ORT_SUFFIX.sub("", n.name) for sub in session.get_provider_graph_assignment_info()
              if sub.ep_name == QNN_EP for n in sub.get_nodes()}
    assigned = len([n for n in nodes if n in on_qnn])
    return HtpCheck(soc_model, True, assigned, [], round(time.perf_counter() - started, 3),
                    folded_nodes=len(nodes) - assigned)


def run_outputs(model: str | Path, soc_model: str, raws: list[str], spec_json: str, out: str | Path) -> dict:
    """The model's outputs on the HTP for every raw, into an .npy file [len(raws), ...]; timings."""
    from qcal.preprocess import resolve_profile
    from qcal.raws import InputSpec
    from qcal.runtime import htp_session, runner

    spec_fields = json.loads(spec_json)
    spec = InputSpec(resolve_profile(spec_fields["profile"], spec_fields["settings"]), spec_fields["input_name"],
                     spec_fields["layout"])
    started = time.perf_counter()
    run = runner(htp_session(model, soc_model))
    created = time.perf_counter() - started
    seconds = []
    with atomic_path(out) as tmp:
        outputs = None
        for i, raw in enumerate(raws):
            t = time.perf_counter()
            y = run(spec.read(raw))
            seconds.append(time.perf_counter() - t)
            if outputs is None:
                outputs = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(raws), *y.shape))
            outputs[i] = y
        if outputs is not None:
            outputs.flush()
            del outputs
    return {"session_seconds": round(created, 3), "seconds_per_image": round(float(np.mean(seconds)), 3) if seconds else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="qcal's HTP child process (see qcal.htp)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("check", "run"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--soc-model", required=True)
        if name == "check":
            p.add_argument("--context-out", help="also write the context binary here if every node runs on the HTP")
        if name == "run":
            p.add_argument("--raws", required=True, help="a file with one raw path a line")
            p.add_argument("--spec", required=True, help="JSON: profile, settings, input_name, layout")
            p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            result = asdict(check(args.model, args.soc_model, args.context_out))
        else:
            raws = Path(args.raws).read_text(encoding="utf-8").splitlines()
            result = run_outputs(args.model, args.soc_model, raws, args.spec, args.out)
    except Exception as err:  # reported to the parent, which raises it with context
        result = {"failure": f"{type(err).__name__}: {str(err).strip()[:2000]}"}
    print(RESULT + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# What the workflow calls: each runs the work above in a child process


def _in_child(args: list[str], timeout: float, what: str) -> dict:
    command = [sys.executable, "-m", "qcal.htp", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HtpError(f"{what}: the HTP simulator did not finish within {timeout:.0f} s") from None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT):])
            if "failure" in result:
                raise HtpError(f"{what}: {result['failure']}")
            return result
    tail = (done.stderr or done.stdout).strip()[-800:]
    raise HtpError(f"{what}: the HTP process died (exit code {done.returncode}): {tail}")


def check_on_htp(model: str | Path, soc_model: str, context_out: str | Path | None = None,
                 timeout: float = 900) -> HtpCheck:
    """Does every node of the model run on the HTP of soc_model (CPU fallback off)? With context_out, the
    EPContext model for that SoC is written there too, only when they all do."""
    args = ["check", "--model", str(model), "--soc-model", soc_model]
    if context_out is not None:
        args += ["--context-out", str(context_out)]
    return HtpCheck(**_in_child(args, timeout, f"checking {model} on the HTP (soc_model {soc_model})"))


def outputs_on_htp(model: str | Path, soc_model: str, raws: list[str], spec_json: str, out: str | Path,
                   seconds_per_image: float = 120) -> tuple[np.ndarray, dict]:
    """The model's outputs on the HTP simulator, one row per raw (a memory-mapped .npy), and timings."""
    listing = Path(out).with_suffix(".raws.txt")
    listing.write_text("".join(raw + "\n" for raw in raws), encoding="utf-8")
    timings = _in_child(["run", "--model", str(model), "--soc-model", soc_model, "--raws", str(listing), "--spec",
                         spec_json, "--out", str(out)], 120 + seconds_per_image * len(raws),
                        f"running {model} on the HTP (soc_model {soc_model})")
    return np.load(out, mmap_mode="r"), timings


if __name__ == "__main__":
    sys.exit(main())
