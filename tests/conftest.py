"""Shared test helpers: generated images and a real Snakemake run of the workflow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def photo_like(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Smooth gradients plus noise: decodes and resizes like a photo, unlike a flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def write_jpeg(path: Path, width: int = 320, height: int = 240, seed: int = 0, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo_like(width, height, seed).save(path, format="JPEG", quality=90, **save)
    return path


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True,
              path_prefix: Path | None = None, timeout: float | None = 1800) -> subprocess.CompletedProcess:
    """Run the real workflow (CLI) in workdir with the given config overrides."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "test-config.yaml"
    # Tests of other stages quantize for ONNX Runtime's CPU; tests/test_htp.py runs the default, htp.
    config = {"target": {"runtime": "cpu"}, **config}
    config_path.write_text(yaml.safe_dump(config))
    path = os.pathsep.join(str(p) for p in (path_prefix, Path(sys.executable).parent, os.environ["PATH"]) if p)
    env = dict(os.environ, PATH=path)
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config_path), "--profile", str(REPO / "profiles" / "default"),
           "--cores", "2", *args]
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def jobs_run(done: subprocess.CompletedProcess) -> Counter:
    """How many jobs of each rule a run executed (from Snakemake's log on stderr)."""
    return Counter(re.findall(r"^(?:local)?rule (\w+):$", done.stderr, flags=re.M))


@pytest.fixture
def tiny_images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    for i, (w, h) in enumerate([(320, 240), (240, 320), (303, 227)]):
        write_jpeg(folder / f"img{i}.jpg", w, h, seed=i)
    write_jpeg(folder / "sub" / "deeper.JPEG", 200, 150, seed=9)
    return folder
