"""Where the model will run decides how it is quantized. The runtimes are SNPE's (its runtime table):
CPU and GPU run float natively (a quantized model is dequantized when it is loaded), the DSP/HTP runs
quantized models (SNPE 2: only quantized ones), the AIP only 8-bit ones. Each preset picks the
activation precision, what may stay float, how the detector's decode tail is handled and what qcal
checks, and says why in the summary.

Parse-time code: no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field

from qcal.errors import QcalError

RUNTIMES = ("cpu", "gpu", "htp", "dsp", "aip")
PRECISIONS = ("int8", "int16", "float")


@dataclass(frozen=True)
class Soc:
    """A Snapdragon SoC as QNN's HTP backend knows it."""

    name: str
    soc_model: str   # QNN's id, the onnxruntime-qnn provider option soc_model
    arch: str        # HTP architecture
    marketing: str

    @property
    def fp16(self) -> bool:
        """v68 HTPs have no floating point: every node must be quantized, and to 8 bits."""
        return self.arch != "v68"


SOCS = {soc.name: soc for soc in (
    Soc("SM8350", "30", "v68", "Snapdragon 888"),
    Soc("SM8450", "36", "v69", "Snapdragon 8 Gen 1"),
    Soc("SM8550", "43", "v73", "Snapdragon 8 Gen 2"),
    Soc("SM8650", "57", "v75", "Snapdragon 8 Gen 3"),
    Soc("SC8380XP", "60", "v73", "Snapdragon X Elite"),
    Soc("SM8750", "69", "v79", "Snapdragon 8 Elite"),
    Soc("SM8850", "87", "v81", "Snapdragon 8 Elite Gen 5"),
    Soc("QCS6490", "93", "v68", "Qualcomm QCS6490"),
)}


def find_soc(name: str) -> Soc:
    """A SoC by its name (any case) or its QNN soc_model id."""
    key = str(name).strip().upper()
    for soc in SOCS.values():
        if key in (soc.name, soc.soc_model):
            return soc
    known = ", ".join(f"{s.name} ({s.soc_model})" for s in SOCS.values())
    raise TargetError("target.socs", f"unknown SoC {name!r}; known: {known}")


class TargetError(QcalError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key '{key}': {problem}")
        self.key = key


@dataclass(frozen=True)
class Target:
    """The resolved preset: what qcal makes for this runtime and why."""

    runtime: str                  # cpu, gpu, htp (dsp is htp) or aip
    socs: tuple[Soc, ...]         # htp: the SoCs to check on and prepare a context binary for
    activations: str              # int8 or int16
    tail: str                     # the decode tail: float, int16 or int8
    split_outputs: bool           # boxes and scores as two outputs, so one scale never covers both
    search_precision: str | None  # what the accuracy search may move a layer to; None: no search possible
    quantized_model: bool         # False for gpu: the float model and the encodings are the product
    reduce_range: bool | None     # None: decided for this machine's CPU (auto); only the cpu runtime uses it
    reasons: tuple[str, ...] = field(default=())

    @property
    def int8_only(self) -> bool:
        return self.runtime == "aip" or any(not soc.fp16 for soc in self.socs)

    @property
    def on_htp(self) -> bool:
        return self.runtime == "htp"


def resolve(runtime: str, socs: list[str], activations: str, tail: str, search_precision: str,
            reduce_range: str | bool) -> Target:
    """The preset for `runtime`, with the config's explicit choices checked against it ('auto' takes
    the preset's). Raises TargetError naming the key when a choice is impossible on the runtime."""
    if runtime not in RUNTIMES:
        raise TargetError("target.runtime", f"{runtime!r} is not one of {', '.join(RUNTIMES)}")
    runtime = "htp" if runtime == "dsp" else runtime  # SNPE's DSP runtime runs on the HTP of current SoCs
    chosen = tuple(find_soc(s) for s in socs) if runtime == "htp" else ()
    if runtime == "htp" and not chosen:
        raise TargetError("target.socs", "name at least one SoC for the htp runtime (e.g. SM8650)")
    reasons: list[str] = []
    int8_only = runtime == "aip" or any(not soc.fp16 for soc in chosen)
    if runtime == "cpu":
        reasons.append("ONNX Runtime's CPU provider runs QDQ models; float layers are allowed")
        default_activations, default_precision = "int8", "float"
    elif runtime == "gpu":
        reasons.append("SNPE/QNN's GPU runtime runs float; a quantized model would be dequantized when loaded, "
                       "so qcal writes the float model and the encodings (no QDQ model), and the accuracy report "
                       "shows what the dequantized int8 weights cost")
        default_activations, default_precision = "int8", None
    elif int8_only:
        which = "the AIP" if runtime == "aip" else "a v68 HTP (no floating point)"
        reasons.append(f"{which} runs 8-bit models only: every node quantized to 8 bits, none float, no 16-bit "
                       "tensor; the decode tail is quantized with boxes and scores as separate outputs")
        default_activations, default_precision = "int8", None
    else:
        reasons.append("the HTP runs quantized models; w8a16 by default, as Qualcomm AI Hub ships its YOLO "
                       "models (YOLOv8n COCO mAP50-95: float 38.5, w8a16 38.2, w8a8 31.7); the decode tail runs in "
                       "fp16; every node must run on the HTP (checked per SoC)")
        default_activations, default_precision = "int16", "int16"

    activations = default_activations if activations == "auto" else activations
    if activations == "float" or activations not in ("int8", "int16"):
        raise TargetError("quantization.activations", f"{activations!r}: activations are int8 or int16")
    if activations == "int16" and int8_only:
        raise TargetError("quantization.activations", f"int16 is not possible on {runtime}: {reasons[-1]}")

    if tail == "auto":
        tail = "int8" if int8_only else "float"
    if tail not in PRECISIONS:
        raise TargetError("quantization.tail", f"{tail!r} is not one of {', '.join(PRECISIONS)}")
    if int8_only and tail != "int8":
        raise TargetError("quantization.tail", f"{tail} is not possible on {runtime}: {reasons[-1]}")

    if search_precision == "auto":
        search_precision = default_precision
        if search_precision == "int16" and activations == "int16":
            search_precision = None  # nothing left to raise: every activation is already 16-bit
    elif search_precision not in ("int16", "float"):
        raise TargetError("search.precision", f"{search_precision!r} is not int16 or float")
    elif runtime != "cpu" and search_precision == "float":
        raise TargetError("search.precision", f"float layers do not run on {runtime}; use int16 (or runtime cpu)")
    elif int8_only or runtime == "gpu":
        raise TargetError("search.precision", f"no layer can leave int8 on {runtime}: {reasons[-1]}")
    elif search_precision == "int16" and activations == "int16":
        search_precision = None

    if runtime == "cpu":
        resolved_range = None if reduce_range == "auto" else bool(reduce_range)
    else:
        if reduce_range not in ("auto", False):
            raise TargetError("quantization.reduce_range", "7-bit weights are a fix for ONNX Runtime's x86 CPU kernels; "
                              f"the {runtime} runtime takes 8-bit weights")
        resolved_range = False
    return Target(runtime, chosen, activations, tail, split_outputs=tail == "int8",
                  search_precision=search_precision, quantized_model=runtime != "gpu", reduce_range=resolved_range,
                  reasons=tuple(reasons))
