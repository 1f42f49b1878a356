"""profiles/slurm on a real SLURM: a one-node cluster on localhost runs the workflow like a local run.

Needs root and apt-get (installs Debian's slurm-wlm and munge); skipped otherwise, but fails when the
environment variable CI is set. The cluster is started and stopped by tests/slurm_cluster.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import onnx
import pytest
import yaml

import slurm_cluster
from conftest import REPO, snakemake, write_jpeg
from qcal.stats import load_stats
from qcal.synthetic import build_tiny

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

PROFILE = REPO / "profiles" / "slurm"
SIZE = 64
IMAGES = 7


def profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def cannot_run(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, but the SLURM test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm():
    partition = profile()["default-resources"]["slurm_partition"]
    try:
        installed = slurm_cluster.install()
    except slurm_cluster.Unavailable as err:
        cannot_run(str(err))
    start = time.monotonic()
    with slurm_cluster.LocalSlurm(partition) as cluster:
        cluster.timings = {"install": installed, "start": time.monotonic() - start}
        yield cluster


def slurm_command(cluster: slurm_cluster.LocalSlurm, workdir: Path, config: dict,
                  *targets: str) -> tuple[list[str], dict[str, str]]:
    """`snakemake --profile profiles/slurm <targets>` submitting to the test cluster, and its environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "test-config.yaml"
    config_path.write_text(yaml.safe_dump({"target": {"runtime": "cpu"}, **config}))
    env = {k: v for k, v in cluster.env().items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["SLURM_CONF"] = str(slurm_cluster.DEFAULT_CONF)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    # The profile as users get it; only the first status check comes sooner than its 40 s (jobs here
    # take seconds). The rules ask for at most 4 GB, well within this machine.
    assert cluster.hardware["RealMemory"] >= 4000
    overrides = ["--slurm-init-seconds-before-status-checks", "1"]
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config_path), "--profile", str(PROFILE), *overrides, *targets]
    return cmd, env


def run_on_slurm(cluster: slurm_cluster.LocalSlurm, workdir: Path, config: dict,
                 *targets: str) -> subprocess.CompletedProcess:
    cmd, env = slurm_command(cluster, workdir, config, *(targets or ("quantize",)))
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"snakemake on SLURM failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                             f"{cluster.logs()}")
    return done


def slurm_jobs(cluster: slurm_cluster.LocalSlurm, run_id: str) -> list[dict]:
    """The SLURM jobs of one Snakemake run (its jobs are named by the run ID)."""
    fields = {"id": "%i", "state": "%T", "cpus": "%C", "time_limit": "%l", "partition": "%P", "comment": "%k"}
    done = subprocess.run(["squeue", "--states=all", "--noheader", "--name", run_id,
                           "--format", "|".join(fields.values())],
                          capture_output=True, text=True, env=cluster.env(), check=True, timeout=30)
    return [dict(zip(fields, line.split("|"))) for line in done.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Generated images, a tiny YOLOv5-shaped model, and the results of a local run of them."""
    root = tmp_path_factory.mktemp("slurm-case")
    for i in range(IMAGES):
        write_jpeg(root / "images" / f"img{i}.jpg", 80 + 9 * i, 60 + 5 * i, seed=i)
    onnx.save(build_tiny(size=(SIZE, SIZE)), root / "tiny.onnx")
    config = {"images": str(root / "images"), "model": str(root / "tiny.onnx"),
              "preprocess": {"height": SIZE, "width": SIZE}, "calibration": {"shards": 3},
              "evaluation": {"holdout": 0}}
    snakemake(root / "local", config, "quantize")
    return root / "local", config


def assert_local_results(remote: Path, local: Path) -> None:
    local_list = (local / "results/input_list.txt").read_text()
    slurm_list = (remote / "results/input_list.txt").read_text()
    assert len(slurm_list.splitlines()) == IMAGES
    assert slurm_list == local_list.replace(str(local), str(remote))
    for raw in slurm_list.splitlines():
        rel = Path(raw).relative_to(remote)
        assert (remote / rel).read_bytes() == (local / rel).read_bytes(), rel
    local_stats, _ = load_stats(local / "results/calibration/stats.npz")
    slurm_stats, _ = load_stats(remote / "results/calibration/stats.npz")
    assert local_stats.keys() == slurm_stats.keys() and all(local_stats[k] == slurm_stats[k] for k in local_stats)
    for name in ("calibration/ranges.json", "encodings.json"):
        assert (remote / "results" / name).read_bytes() == (local / "results" / name).read_bytes(), name
    assert json.loads((remote / "results/encodings.json").read_text())["activation_encodings"]


def test_slurm_profile_gives_the_local_results(slurm, case, tmp_path):
    local, config = case
    start = time.monotonic()
    remote = tmp_path / "slurm"
    done = run_on_slurm(slurm, remote, config)
    slurm.timings["slurm run"] = time.monotonic() - start
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in slurm.timings.items()))
    log = done.stdout + done.stderr

    # Everything but the local rules went through SLURM, the per-image jobs as one batch.
    ran = Counter(re.findall(r"^\s*(?:local)?rule (\w+):$", done.stderr, flags=re.M))  # with batch members
    local_jobs = Counter(re.findall(r"^localrule (\w+):$", done.stderr, flags=re.M))
    assert local_jobs["input_list"] == 1 and local_jobs["quantize"] == 1  # localrule: True, target rule
    assert ran["raw"] == IMAGES and ran["calibrate_shard"] == 3 and ran["quantize_model"] == 1
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs = slurm_jobs(slurm, run_id)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert sorted(j["id"] for j in jobs) == sorted(submitted)
    assert all(j["state"] == "COMPLETED" and j["partition"] == slurm.partition for j in jobs), jobs
    by_comment = {j["comment"]: j for j in jobs}
    assert len(jobs) == len(by_comment) == sum(ran.values()) - sum(local_jobs.values()) - IMAGES + 1  # 1 batch
    batch = by_comment["rule_raw_batch_raw"]
    assert batch["cpus"] == "1" and batch["time_limit"] == f"{IMAGES}:00"  # 7 images x 1 min, one after another
    assert not [c for c in by_comment if "input_list" in c or c.startswith("rule_raw_wildcards")]
    assert_local_results(remote, local)


@pytest.mark.parametrize("stage, job_comment", [
    ("raw", "rule_raw_batch_raw"),
    ("calibration", "rule_calibrate_shard"),
])
def test_killed_slurm_run_resumes_to_the_local_results(slurm, case, tmp_path, stage, job_comment):
    """SIGKILL the main Snakemake process once a job of the stage is on the cluster, then do what the
    README says: cancel the run's jobs, unlock, run the same command again."""
    local, config = case
    remote = tmp_path / "slurm"
    cmd, env = slurm_command(slurm, remote, config, "quantize")
    log_path = tmp_path / "killed-run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, cwd=remote, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        run_id, deadline = None, time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            text = log_path.read_text()
            run_id = run_id or next(iter(re.findall(r"SLURM run ID: (\S+)", text)), None)
            if run_id and any(j["comment"].startswith(job_comment) for j in slurm_jobs(slurm, run_id)):
                break
            time.sleep(0.2)
        assert process.poll() is None, f"the run ended before a {stage} job was submitted:\n{log_path.read_text()}"
        assert run_id, "no SLURM run ID in the log"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    subprocess.run(["scancel", "--name", run_id], env=slurm.env(), check=True, timeout=30)
    deadline = time.monotonic() + 120
    while any(j["state"] in ("PENDING", "RUNNING", "COMPLETING") for j in slurm_jobs(slurm, run_id)):
        assert time.monotonic() < deadline, slurm_jobs(slurm, run_id)
        time.sleep(0.5)
    assert not (remote / "results/encodings.json").exists(), f"the run finished before the kill ({stage})"

    run_on_slurm(slurm, remote, config, "--unlock")
    run_on_slurm(slurm, remote, config)
    assert_local_results(remote, local)
