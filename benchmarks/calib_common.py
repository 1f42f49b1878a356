"""Shared helpers for bench_calibration.py and bench_end_to_end.py: timed child processes with their own
peak RSS, machine facts, and the CPU other processes used meanwhile.

Peak memory is read per child with os.wait4(), not with getrusage(RUSAGE_CHILDREN): the latter is the
maximum over *every* child waited for so far, so after one 13 GB child every later child would appear to
use 13 GB. wait4's ru_maxrss is the largest RSS of that child or any descendant it waited for (the kernel
folds waited-for descendants into it), i.e. the biggest single process of the tree, not their sum.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from benchlib import busy_seconds, cpu_model  # noqa: E402
BUSY_FLAG = 0.15  # average cores used by other processes during a run above which a row is flagged


@dataclass
class Run:
    """One timed child process."""

    wall: float           # seconds
    cpu: float            # user + sys of the child and its waited-for descendants
    maxrss_mb: float      # peak RSS of the largest single process in the tree, MiB
    other: float          # average cores used meanwhile by other processes on the machine
    returncode: int
    log: Path
    text: str = ""
    job_stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        """A one-line reason for a failed run."""
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            reason = f"killed by {name}"
            if name == "SIGKILL":
                reason += " (kernel OOM killer?)"
        else:
            reason = f"exit {self.returncode}"
        last = [line for line in self.text.strip().splitlines() if line.strip()]
        return reason + (f": {last[-1][:160]}" if last else "")


def mem_available_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def _limit_address_space(limit_bytes: int | None):
    if not limit_bytes:
        return None

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
          mem_limit_bytes: int | None = None, timeout: float | None = None) -> Run:
    """Run cmd (stdout+stderr to log) and measure it. Never raises on failure: check Run.ok."""
    os.sync()  # flush earlier writes so they are not paid for inside this measurement
    busy0 = busy_seconds()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_limit_address_space(mem_limit_bytes))
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()  # only the process this function started
            time.sleep(0.005)
    wall = time.perf_counter() - start
    busy1 = busy_seconds()
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
    cpu = usage.ru_utime + usage.ru_stime
    other = max(0.0, (busy1 - busy0) - cpu) / wall if wall > 0 else 0.0
    text = log.read_text(errors="replace")
    return Run(wall, cpu, usage.ru_maxrss / 1024, other, proc.returncode, log, text, job_stats(text))


def job_stats(text: str) -> dict[str, int]:
    """Snakemake's "Job stats" table as {rule: count} ({} when nothing was to be done or no table)."""
    m = re.search(r"^Job stats:\n.*?\n-+ +-+\n(.*?)^total +\d+", text, re.S | re.M)
    if not m:
        return {}
    return {name: int(n) for name, n in re.findall(r"^(\S+) +(\d+)$", m.group(1), re.M)}


def bench_env() -> dict[str, str]:
    """This interpreter's environment with its bin folder first on PATH (the workflow imports qcal)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def package_versions(env: dict[str, str], modules: list[str]) -> dict[str, str]:
    code = ("import importlib, sys\n"
            "for m in sys.argv[1:]:\n"
            "    try:\n"
            "        print(m, getattr(importlib.import_module(m), '__version__', '?'))\n"
            "    except Exception as e:\n"
            "        print(m, 'missing')\n")
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, env=env)
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


def machine_facts(env: dict[str, str], modules: list[str], extra: list[str] | None = None) -> list[str]:
    cpu = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError):
        total_mb = float("nan")
    versions = package_versions(env, modules)
    lines = [
        f"machine   : {platform.node()}  {platform.system()} {platform.release()}  {cpu}",
        f"cpus      : nproc={usable} (os.cpu_count={os.cpu_count()}); load average at start {load}",
        f"memory    : {total_mb / 1024:.1f} GiB total, {mem_available_mb() / 1024:.1f} GiB available at start",
        f"python    : {platform.python_version()} ({sys.executable})",
        "versions  : " + "  ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    return lines + (extra or [])


def flag(run: Run) -> str:
    return "!" if run.other > BUSY_FLAG else " "


def note(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)
