"""One image -> one raw tensor in SNPE's format, plus a JSON sidecar with the letterbox geometry.

This module runs once per image as its own Snakemake job, so it deliberately imports only Pillow and
the standard library: importing numpy would add ~0.1 s to every job, more than the work itself.
Float conversion uses byte lookup tables (one per output byte of the float32), which is exact and fast.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import struct
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from qcal.errors import QcalError
from qcal.files import write_atomic

LAYOUTS = ("NHWC", "NCHW")
DTYPES = {"float32": 4, "uint8": 1}
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Profile:
    """Everything that decides the bytes of a raw tensor. Changing any field changes every raw."""

    height: int = 640
    width: int = 640
    layout: str = "NHWC"          # SNPE's native layout; NCHW for ONNX-style consumers
    dtype: str = "float32"        # uint8 writes the letterboxed pixels (SNPE --use_native_input_files)
    channel_order: str = "RGB"
    resize: str = "letterbox"     # letterbox (aspect kept, centred padding) or stretch
    pad_value: int = 114          # YOLOv5's gray
    resample: str = "bilinear"
    divisor: float = 255.0        # value = (pixel / divisor - mean[c]) / std[c], as YOLOv5 and torchvision
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    max_pixels: int = 200_000_000  # refuse larger images (a 108 MP phone photo passes; decoding takes ~1 GB)

    @property
    def nbytes(self) -> int:
        return self.height * self.width * 3 * DTYPES[self.dtype]


# Named starting points; config overrides individual fields.
PROFILES: dict[str, Profile] = {
    "yolov5": Profile(),
    # Torchvision/ImageNet-style classifiers: stretch, ImageNet mean/std.
    "imagenet": Profile(height=224, width=224, resize="stretch",
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}


def resolve_profile(name: str, overrides: dict | None = None) -> Profile:
    """The named profile with config overrides applied and checked."""
    if name not in PROFILES:
        raise ValueError(f"unknown preprocessing profile {name!r}; known: {', '.join(sorted(PROFILES))}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}
    profile = replace(PROFILES[name], **fields)
    check_profile(profile)
    return profile


def check_profile(p: Profile) -> None:
    problems = []
    if p.height < 1 or p.width < 1:
        problems.append(f"size {p.height}x{p.width} must be positive")
    if p.layout not in LAYOUTS:
        problems.append(f"layout {p.layout!r} must be one of {LAYOUTS}")
    if p.dtype not in DTYPES:
        problems.append(f"dtype {p.dtype!r} must be one of {tuple(DTYPES)}")
    if p.channel_order not in ("RGB", "BGR"):
        problems.append(f"channel_order {p.channel_order!r} must be RGB or BGR")
    if p.resize not in ("letterbox", "stretch"):
        problems.append(f"resize {p.resize!r} must be letterbox or stretch")
    if p.resample not in RESAMPLE:
        problems.append(f"resample {p.resample!r} must be one of {tuple(RESAMPLE)}")
    if not 0 <= p.pad_value <= 255:
        problems.append(f"pad_value {p.pad_value} must be within 0..255")
    if p.divisor <= 0:
        problems.append(f"divisor {p.divisor} must be positive")
    if len(p.mean) != 3 or len(p.std) != 3 or any(s == 0 for s in p.std):
        problems.append("mean and std need three values each, std non-zero")
    if problems:
        raise ValueError("invalid preprocessing profile: " + "; ".join(problems))


@dataclass(frozen=True)
class Letterbox:
    """Where the resized image sits in the model input; maps boxes back to the original image."""

    orig_width: int
    orig_height: int
    scale_x: float
    scale_y: float
    resized_width: int
    resized_height: int
    pad_left: int
    pad_top: int
    pad_right: int
    pad_bottom: int


def letterbox_geometry(orig_width: int, orig_height: int, width: int, height: int,
                       resize: str = "letterbox") -> Letterbox:
    """YOLOv5's letterbox: one scale for both sides, rounded (not truncated) so the resized image
    never comes out a pixel short, and the padding split evenly (the odd pixel goes right/bottom)."""
    if resize == "stretch":
        return Letterbox(orig_width, orig_height, width / orig_width, height / orig_height,
                         width, height, 0, 0, 0, 0)
    r = min(width / orig_width, height / orig_height)
    new_w = min(width, max(1, round(orig_width * r)))
    new_h = min(height, max(1, round(orig_height * r)))
    pad_w, pad_h = width - new_w, height - new_h
    left, top = pad_w // 2, pad_h // 2
    return Letterbox(orig_width, orig_height, r, r, new_w, new_h, left, top, pad_w - left, pad_h - top)


class BadImageError(QcalError):
    """The file is not an image qcal can decode safely. The message names the reason."""


# qcal checks the pixel count itself against preprocess.max_pixels (below), before decoding; Pillow's own
# fixed guard (89 MP warns, 179 MP refuses) would otherwise refuse photos the user allowed. Set once, for
# the process: jobs share it, and warning filters are not thread-safe to change per call.
Image.MAX_IMAGE_PIXELS = None

# EXIF orientation -> the transpose that makes the image upright (Pillow's ImageOps.exif_transpose table).
ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def exif_orientation(im: Image.Image) -> tuple[int, str]:
    """The EXIF orientation as 1..8, and a warning when the tag holds something else (a RATIONAL, raw
    bytes, an out-of-range number): such an image is used as stored (orientation 1)."""
    value = im.getexif().get(0x0112, 1)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 1, f"EXIF orientation {value!r} is not a number; used as stored"
    if number.is_integer() and 1 <= number <= 8:
        return int(number), ""
    return 1, f"EXIF orientation {value!r} is not 1..8; used as stored"


def load_rgb(path: str | os.PathLike, max_pixels: int) -> tuple[Image.Image, int, list[str]]:
    """Decode an image as 8-bit RGB with its EXIF orientation applied; returns (image, orientation,
    warnings)."""
    notes: list[str] = []
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block its reader forever
            raise BadImageError("not a regular file (a FIFO, device or socket)")
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise BadImageError(
                    f"{im.width}x{im.height} = {im.width * im.height:,} pixels is over the limit of "
                    f"{max_pixels:,} (a decompression-bomb guard; raise preprocess.max_pixels to allow it)")
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                notes.append(f"{frames} frames; the first is used")
            im.load()
            orientation, note = exif_orientation(im)
            if note:
                notes.append(note)
            if orientation in ORIENTATIONS:
                im = im.transpose(ORIENTATIONS[orientation])
            return to_rgb8(im), orientation, notes
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError("not a decodable image (unknown format, empty, or not an image at all)") from None
    except Image.DecompressionBombError as err:
        raise BadImageError(f"refused as a possible decompression bomb: {err}") from None
    except PermissionError:
        raise BadImageError("cannot be read: permission denied") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as err:
        raise BadImageError(f"corrupt or truncated image data: {err}") from None


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. 16-bit and 32-bit integer images are scaled, not clipped
    (Pillow's plain convert would saturate them to white)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        top = 65535 if im.mode.startswith("I;16") or (im.getextrema()[1] or 0) > 255 else 255
        im = im.convert("I").point(lambda v: v * (255 / top)).convert("L")
    elif im.mode == "F":
        im = im.point(lambda v: v * 255).convert("L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def letterbox_image(im: Image.Image, profile: Profile) -> tuple[Image.Image, Letterbox]:
    geo = letterbox_geometry(im.width, im.height, profile.width, profile.height, profile.resize)
    resized = im.resize((geo.resized_width, geo.resized_height), RESAMPLE[profile.resample])
    if profile.resize == "stretch":
        return resized, geo
    pad = (profile.pad_value,) * 3
    canvas = Image.new("RGB", (profile.width, profile.height), pad)
    canvas.paste(resized, (geo.pad_left, geo.pad_top))
    return canvas, geo


def float32_luts(profile: Profile) -> list[list[bytes]]:
    """Per channel, four 256-entry byte tables: table[b][x] is byte b of float32((x/divisor-mean)/std),
    computed in double precision and rounded once."""
    luts = []
    for c in range(3):
        packed = [struct.pack("<f", (x / profile.divisor - profile.mean[c]) / profile.std[c]) for x in range(256)]
        luts.append([bytes(v[b] for v in packed) for b in range(4)])
    return luts


def encode_tensor(im: Image.Image, profile: Profile) -> bytes:
    """The model-input image as raw bytes in the profile's layout and dtype (little-endian)."""
    bands = im.split()
    if profile.channel_order == "BGR":
        bands = bands[::-1]
    planes = [b.tobytes() for b in bands]
    if profile.dtype == "uint8":
        return Image.merge("RGB", bands).tobytes() if profile.layout == "NHWC" else b"".join(planes)
    n, channels = len(planes[0]), len(planes)
    luts = float32_luts(profile)
    if profile.channel_order == "BGR":
        luts = luts[::-1]  # mean/std are given in RGB order
    out = bytearray(n * channels * 4)
    for c, (plane, lut) in enumerate(zip(planes, luts)):
        for b in range(4):
            if profile.layout == "NHWC":
                out[c * 4 + b::channels * 4] = plane.translate(lut[b])
            else:
                start = c * n * 4 + b
                out[start:start + n * 4:4] = plane.translate(lut[b])
    return bytes(out)


def difference_hash(im: Image.Image) -> int:
    """64-bit dHash: brightness gradients of a 9x8 thumbnail. Photos of one scene differ in few bits."""
    pixels = im.convert("L").resize((9, 8), Image.Resampling.BILINEAR).tobytes()
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (pixels[row * 9 + col] > pixels[row * 9 + col + 1])
    return bits


@dataclass
class RawResult:
    image: str                       # the image's path relative to the image folder: its identity
    source: str                      # where it was read from
    status: str                      # "ok" or "skipped"
    error: str = ""
    exif_orientation: int = 1
    letterbox: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)
    nbytes: int = 0
    dhash: str = ""                  # perceptual hash of the image, for near-duplicate (same scene) checks
    warnings: list[str] = field(default_factory=list)  # used, but not quite as stored (see load_rgb)


def image_to_raw(image: str | os.PathLike, raw: str | os.PathLike, meta: str | os.PathLike,
                 profile: Profile, on_bad_image: str = "fail", image_id: str | None = None) -> RawResult:
    """Preprocess one image. On a bad image: raise BadImageError ("fail") or write a zero-byte raw and a
    sidecar with status "skipped" ("skip"), which the input list leaves out."""
    image_id = image_id or os.path.basename(image)
    try:
        rgb, orientation, notes = load_rgb(image, profile.max_pixels)
    except BadImageError as err:
        if on_bad_image != "skip":
            raise BadImageError(f"cannot use image {image}: {err}") from None
        result = RawResult(image_id, str(image), "skipped", error=str(err), profile=asdict(profile))
        write_atomic(raw, b"")
    else:
        boxed, geo = letterbox_image(rgb, profile)
        data = encode_tensor(boxed, profile)
        if len(data) != profile.nbytes:  # a wrong-size raw is silently misread by SNPE: never write one
            raise AssertionError(f"{image}: raw is {len(data)} bytes, expected {profile.nbytes}")
        write_atomic(raw, data)
        result = RawResult(image_id, str(image), "ok", exif_orientation=orientation, letterbox=asdict(geo),
                           profile=asdict(profile), nbytes=len(data), dhash=f"{difference_hash(rgb):016x}",
                           warnings=notes)
    write_atomic(meta, (json.dumps(asdict(result), indent=1) + "\n").encode())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Letterbox one image into an SNPE raw tensor.")
    parser.add_argument("image")
    parser.add_argument("raw")
    parser.add_argument("meta")
    parser.add_argument("--profile", default="yolov5")
    parser.add_argument("--settings", default="{}", help="JSON object of profile field overrides")
    parser.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail")
    parser.add_argument("--image-root", help="the image folder: the sidecar names the image by its path relative "
                        "to it (default: by its file name)")
    args = parser.parse_args(argv)
    profile = resolve_profile(args.profile, json.loads(args.settings))
    try:
        image_id = os.path.relpath(args.image, args.image_root) if args.image_root else None
        result = image_to_raw(args.image, args.raw, args.meta, profile, args.on_bad_image, image_id)
    except BadImageError as err:
        print(f"qcal: {err}", file=sys.stderr)
        return 1
    if result.status == "skipped":
        print(f"qcal: skipped image {args.image}: {result.error}", file=sys.stderr)
    for note in result.warnings:
        print(f"qcal: warning: {args.image}: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
