"""Shared helpers for the benchmark scripts: the environment timed commands run in, and snapshots of a
git revision (so a benchmark is not broken or skewed by files being edited while it runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench_env(scripts_dir: Path | None = None) -> dict[str, str]:
    """os.environ with this Python's bin folder first on PATH (the workflow imports qcal) and, for a
    snapshot, PYTHONPATH pointing at its scripts/ so `import qcal` finds the snapshot rather than the
    editable install (a plain .pth entry, which PYTHONPATH precedes)."""
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTHONPATH", None)
    if scripts_dir is not None:
        env["PYTHONPATH"] = str(scripts_dir)
    return env


def git_snapshot(ref: str, dest: Path) -> str:
    """Extract the repository's files at `ref` into dest with `git archive` (read-only for the repo);
    returns the commit id. Untracked files (benchmarks/ itself, uncommitted edits) are not included."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return commit


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return float("nan")
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("?" where there is none)."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def median_run(runs: list):
    """The run with the median wall time (`.wall`; the lower median for even counts)."""
    return sorted(runs, key=lambda r: r.wall)[(len(runs) - 1) // 2]


def machine_busy(seconds: float = 3.0) -> float:
    """Cores kept busy by the machine (this process sleeps meanwhile) over `seconds`."""
    import time

    b0, t0 = busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return (busy_seconds() - b0) / (time.monotonic() - t0)


def wait_until_quiet(max_wait: float, threshold: float = 0.2, say=print) -> float:
    """Wait (up to max_wait seconds) until other processes use less than `threshold` cores; returns the
    last reading. Timings on a small shared machine are meaningless while something else runs."""
    import time

    deadline = time.monotonic() + max_wait
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        say(f"machine busy with other work ({busy:.2f} cores); waiting for it to settle")
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
        busy = machine_busy()
    return busy


def qcal_config_text(snakefile: Path, images: Path) -> str:
    """A qcal config (JSON, which is YAML) naming the image folder. When the workflow can hold images
    out for evaluation (config key evaluation.holdout), hold out none: every image must become a raw,
    as in the plain loop, or the two sides would not do the same work."""
    import json

    import yaml

    config: dict = {"images": str(images)}
    schema_file = Path(snakefile).parent / "config" / "schema.yaml"
    schema = yaml.safe_load(schema_file.read_text()) if schema_file.is_file() else {}
    evaluation = ((schema or {}).get("properties", {}).get("evaluation") or {}).get("properties", {})
    if "holdout" in evaluation:
        config["evaluation"] = {"holdout": 0}
    return json.dumps(config) + "\n"
