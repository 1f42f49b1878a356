"""The `snpe` backend: hand qcal's model, encodings and input list to Qualcomm's own tools.

snpe-onnx-to-dlc converts the prepared float model with qcal's encodings as quantization overrides;
snpe-dlc-quant (SNPE 2) or snpe-dlc-quantize (SNPE 1) then writes the quantized DLC from the input list.
Commands are argument lists run without a shell, so no path is ever re-parsed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from qcal.errors import QcalError

CONVERTER = "snpe-onnx-to-dlc"
QUANTIZERS = ("snpe-dlc-quant", "snpe-dlc-quantize")  # SNPE 2 first, SNPE 1's name second
INSTALL_HINT = ("install Qualcomm's Neural Processing SDK (SNPE) and run its bin/envsetup.sh so that "
                f"{CONVERTER} and {' or '.join(QUANTIZERS)} are on PATH, or set quantization.backend: onnxruntime")


class SnpeError(QcalError):
    pass


def find_tools() -> tuple[str, str]:
    """Paths of the converter and quantizer, or a SnpeError saying what to install."""
    converter = shutil.which(CONVERTER)
    quantizer = next((q for q in map(shutil.which, QUANTIZERS) if q), None)
    missing = [name for name, path in ((CONVERTER, converter), (" or ".join(QUANTIZERS), quantizer)) if not path]
    if missing:
        raise SnpeError(f"the snpe backend needs {', '.join(missing)}: {INSTALL_HINT}")
    return converter, quantizer


def check_raw_format(layout: str) -> None:
    if layout != "NHWC":
        raise SnpeError("the snpe backend reads NHWC raws: set preprocess.layout: NHWC")


def commands(converter: str, quantizer: str, model: str, encodings: str, input_list: str, float_dlc: str,
             out_dlc: str, activation_bits: int, per_channel: bool, native_uint8: bool) -> list[list[str]]:
    """The two tool invocations. qcal's encodings go in as overrides, so SNPE keeps qcal's ranges."""
    convert = [converter, "--input_network", model, "--output_path", float_dlc,
               "--quantization_overrides", encodings]
    quantize = [quantizer, "--input_dlc", float_dlc, "--input_list", input_list, "--output_dlc", out_dlc,
                "--override_params", "--act_bitwidth", str(activation_bits), "--bias_bitwidth", "32"]
    if per_channel:
        quantize.append("--use_per_channel_quantization")
    if native_uint8:
        quantize.append("--use_native_input_files")
    return [convert, quantize]


def run(cmds: list[list[str]], log: str | os.PathLike) -> None:
    with open(log, "w", encoding="utf-8") as out:
        for cmd in cmds:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise SnpeError(f"{Path(cmd[0]).name} failed with exit code {done.returncode}; see {log}")
