"""Jobs running as threads of Snakemake's process: they share the machine's cores (qcal.workflow.CoreSlots),
and the run ends without waiting for timers Snakemake leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from conftest import REPO
from qcal.workflow import CoreSlots


def test_jobs_never_take_more_cores_than_there_are_and_a_big_job_runs_alone():
    slots = CoreSlots(2)
    busy, most, lock = [0], [0], threading.Lock()
    alone = []

    def job(threads: int) -> None:
        with slots.taken(threads):
            with lock:
                busy[0] += min(threads, 2)
                most[0] = max(most[0], busy[0])
                if threads > 2:
                    alone.append(busy[0] == 2)
            time.sleep(0.02)
            with lock:
                busy[0] -= min(threads, 2)

    workers = [threading.Thread(target=job, args=(threads,)) for threads in [1, 1, 1, 2, 1, 8, 1, 2, 1]]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=10)
    assert not any(w.is_alive() for w in workers)  # nothing deadlocked
    assert most[0] == 2 and alone == [True] and slots.free == 2


def test_a_failing_job_gives_its_cores_back():
    slots = CoreSlots(1)
    try:
        with slots.taken(1):
            raise RuntimeError("job failed")
    except RuntimeError:
        pass
    assert slots.free == 1
    with slots.taken(1):  # would wait forever if the failure had kept the slot
        assert slots.free == 0


def test_a_process_that_imported_the_workflow_module_exits_without_waiting_out_its_timers():
    """What Snakemake's job rate limiter leaves when a run ends, with or without its hooks: a non-daemon
    timer. The process must exit at once, and the timer must not fire."""
    code = ("import threading, qcal.workflow\n"
            "threading.Timer(600, lambda: print('fired', flush=True)).start()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "scripts")})
    assert done.returncode == 0, done.stderr
    assert "fired" not in done.stdout
