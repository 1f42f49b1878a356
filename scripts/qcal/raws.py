"""Reading what the raw stage wrote: a raw tensor as the model's input, and its sidecar (which image it
is, where the letterbox put it). Every stage that runs the model reads its inputs through here."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qcal.errors import QcalError
from qcal.preprocess import Profile


@dataclass(frozen=True)
class InputSpec:
    """How raws become the model's input: the raw format (the preprocessing profile) and the model's
    image input (its name and layout)."""

    profile: Profile
    input_name: str
    layout: str  # the model's: NCHW or NHWC

    def read(self, raw: str | Path) -> np.ndarray:
        return read_input(raw, self)

    def to_json(self) -> str:
        """For a child process (qcal.htp): every profile field, so the base profile named does not matter."""
        return json.dumps({"profile": "yolov5", "settings": asdict(self.profile), "input_name": self.input_name,
                           "layout": self.layout})


@dataclass(frozen=True)
class RawItem:
    """One decoded image's raw tensor, with the sidecar facts later stages need."""

    raw: str
    image: str        # the image's path relative to its folder: its identity in every report
    letterbox: dict   # qcal.preprocess.Letterbox as a dict: maps boxes back to the original image


def read_input(raw: str | Path, spec: InputSpec) -> np.ndarray:
    """A raw tensor as the model's float32 input batch [1, ...] in the model's layout."""
    profile, layout = spec.profile, spec.layout
    dtype = np.float32 if profile.dtype == "float32" else np.uint8
    x = np.fromfile(raw, dtype=dtype)
    expected = profile.height * profile.width * 3
    if x.size != expected:
        raise QcalError(f"{raw}: {x.size} values, expected {expected} "
                        f"({profile.height}x{profile.width}x3 {profile.dtype}); rebuild it (delete the file)")
    if profile.layout == "NHWC":
        x = x.reshape(profile.height, profile.width, 3)
        if layout == "NCHW":
            x = x.transpose(2, 0, 1)
    else:
        x = x.reshape(3, profile.height, profile.width)
        if layout == "NHWC":
            x = x.transpose(1, 2, 0)
    if profile.dtype == "uint8":  # native-input raws: apply the profile's normalisation here
        channel_axis = 0 if layout == "NCHW" else 2
        shape = [1, 1, 1]
        shape[channel_axis] = 3
        mean = np.reshape(np.array(profile.mean, np.float32), shape)
        std = np.reshape(np.array(profile.std, np.float32), shape)
        x = (x.astype(np.float32) / np.float32(profile.divisor) - mean) / std
    return np.ascontiguousarray(x[None], dtype=np.float32)


def read_sidecar(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def usable_items(raws: list[str], sidecars: list[str]) -> list[RawItem]:
    """The decoded images among (raw, sidecar) pairs, in the given order (skipped images have empty
    raws and a sidecar saying why)."""
    items = []
    for raw, path in zip(raws, sidecars, strict=True):
        sidecar = read_sidecar(path)
        if sidecar["status"] == "ok":
            items.append(RawItem(str(raw), sidecar["image"], sidecar["letterbox"]))
    return items
