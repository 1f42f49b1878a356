"""ONNX Runtime sessions: the one place that decides how qcal runs a model. CPU sessions run in the
calling process; sessions on Qualcomm's HTP (onnxruntime-qnn's simulator on x86) are only ever created
in a child process by qcal.htp, because the QNN execution provider can crash or stall the process that
hosts it on some graphs (measured: a segfault on a Concat of uint8 and uint16 inputs, graph
preparation that ran for over 20 minutes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

QNN_EP = "QNNExecutionProvider"


def session_options(threads: int, arena: bool = True, spinning: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not arena:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def cpu_session(model: str | Path | bytes, threads: int = 1, arena: bool = True,
                spinning: bool = True) -> ort.InferenceSession:
    """A session on ONNX Runtime's CPU provider; `model` is a path or serialized bytes. arena=False:
    ORT allocates each run's tensors afresh instead of keeping them in its arena between runs.
    spinning=False: ORT's threads sleep as soon as a run ends, leaving the cores to the caller's own
    threads until the next run."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads, arena, spinning), providers=["CPUExecutionProvider"])


def model_output(outputs: list[np.ndarray]) -> np.ndarray:
    """A detector's output as one [1, N, 5 + C] array: a model whose decode tail is quantized emits
    boxes [1, N, 4] and scores [1, N, 1 + C] separately (they must never share one scale)."""
    if len(outputs) >= 2 and outputs[0].ndim == 3 and outputs[0].shape[-1] == 4 and outputs[1].ndim == 3:
        return np.concatenate(outputs[:2], axis=-1)
    return outputs[0]


def runner(session: ort.InferenceSession) -> Callable[[np.ndarray], np.ndarray]:
    """x -> the model's output (see model_output) for a session with one image input."""
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    return lambda x: model_output(session.run(names, {input_name: x}))


# --------------------------------------------------------------------------------------------------
# Qualcomm HTP (onnxruntime-qnn): used by qcal.htp in its child processes


def register_qnn() -> None:
    """Register the onnxruntime-qnn plugin once per process. ImportError when it is not installed."""
    if not any(d.ep_name == QNN_EP for d in ort.get_ep_devices()):
        import onnxruntime_qnn

        ort.register_execution_provider_library(QNN_EP, onnxruntime_qnn.get_library_path())


def htp_session_options(soc_model: str, *, fallback: bool = False, threads: int = 1,
                        config: Mapping[str, str] | None = None) -> ort.SessionOptions:
    """Session options for the HTP backend. soc_model is required on x86 (without it graph finalization
    fails with QNN_COMMON_ERROR_MEM_ALLOC). offload_graph_io_quantization=0 keeps the input's
    QuantizeLinear on the HTP, so node counts with and without CPU fallback agree."""
    register_qnn()
    options = session_options(threads)
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if fallback else "1")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, str(value))
    devices = [d for d in ort.get_ep_devices() if d.ep_name == QNN_EP]
    options.add_provider_for_devices(devices, {"backend_type": "htp", "soc_model": str(soc_model),
                                               "enable_htp_fp16_precision": "1",
                                               "offload_graph_io_quantization": "0"})
    return options


def htp_session(model: str | Path, soc_model: str, *, fallback: bool = False,
                config: Mapping[str, str] | None = None) -> ort.InferenceSession:
    """A session on the HTP; with fallback=False its creation fails unless every node runs there. The
    simulator is single-threaded: more threads would only speed up nodes that fell back to the CPU."""
    return ort.InferenceSession(str(model), htp_session_options(soc_model, fallback=fallback, config=config))
