"""A run killed mid-way (SIGKILL of the whole process group: no clean-up at all) and run again finishes
with the same results as an uninterrupted run: nothing half-written is trusted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest
import yaml

from conftest import REPO, snakemake, write_jpeg
from qcal.stats import load_stats
from qcal.synthetic import build_tiny

SIZE = 64


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    for i in range(40):
        write_jpeg(root / "images" / f"img{i:02}.jpg", 200 + i, 150 + i, seed=i)
    onnx.save(build_tiny(size=(SIZE, SIZE)), root / "tiny.onnx")
    config = {"images": str(root / "images"), "model": str(root / "tiny.onnx"), "evaluation": {"holdout": 0},
              "preprocess": {"height": SIZE, "width": SIZE}, "calibration": {"shards": 1}}
    snakemake(root / "reference", config, "quantize")
    return root, config


def run_until(workdir: Path, config: dict, marker: str, delay: float) -> None:
    """Start the workflow and SIGKILL its whole process group `delay` s after `marker` is logged."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cfg.yaml").write_text(yaml.safe_dump({"target": {"runtime": "cpu"}, **config}))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    process = subprocess.Popen(
        ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile",
         str(workdir / "cfg.yaml"), "--profile", str(REPO / "profiles/default"), "--cores", "2", "quantize"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = threading.Event()

    def watch() -> None:
        for line in process.stderr:
            if marker in line:
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    assert seen.wait(120), f"the run never reached {marker!r}"
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def assert_same_results(work: Path, reference: Path) -> None:
    listed = (work / "results/input_list.txt").read_text().splitlines()
    assert [Path(p).relative_to(work) for p in listed] == \
        [Path(p).relative_to(reference) for p in (reference / "results/input_list.txt").read_text().splitlines()]
    for raw in listed:
        rel = Path(raw).relative_to(work)
        assert (work / rel).read_bytes() == (reference / rel).read_bytes(), rel
    ours, _ = load_stats(work / "results/calibration/stats.npz")
    theirs, _ = load_stats(reference / "results/calibration/stats.npz")
    assert ours.keys() == theirs.keys() and all(ours[k] == theirs[k] for k in ours)
    assert (work / "results/encodings.json").read_bytes() == (reference / "results/encodings.json").read_bytes()
    assert (work / "results/model_quantized.onnx").read_bytes() == \
        (reference / "results/model_quantized.onnx").read_bytes()
    assert not list((work / "results").rglob(".qcal-*.tmp"))  # a killed writer's temporary file is gone


@pytest.mark.slow
@pytest.mark.parametrize("stage, marker, delays", [
    ("raw", "rule raw:", (0.5, 0.1)),
    ("calibration", "rule calibrate_shard:", (1.0, 0.3, 0.05)),
    ("quantization", "rule quantize_model:", (1.0, 0.3, 0.05, 0.0)),
])
def test_killed_run_resumes_to_the_same_results(project, tmp_path, stage, marker, delays):
    root, config = project
    work = tmp_path / "work"
    # How long a stage takes depends on the machine's load: shorter delays until the kill lands inside it.
    for delay in delays:
        run_until(work, config, marker, delay)
        if not (work / "results/encodings.json").exists():
            break
        shutil.rmtree(work)
    assert not (work / "results/encodings.json").exists(), f"the run finished before the kill ({stage})"
    # A SIGKILL leaves Snakemake's lock behind; the user unlocks (README), never a silent auto-unlock,
    # which could let two runs write the same files.
    snakemake(work, config, "--unlock")
    snakemake(work, config, "quantize")
    assert_same_results(work, root / "reference")
