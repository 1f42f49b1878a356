"""Jobs running as threads of Snakemake's process: they share the machine's cores (qcal.workflow.CoreSlots),
and the run ends without waiting for timers Snakemake leaves behind."""

from __future__ import annotations

import threading
import time

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


def test_the_rate_limiters_leftover_timers_are_cancelled_at_the_end_of_a_run():
    from qcal.workflow import cancel_rescheduling_timers

    fired = threading.Event()
    timer = threading.Timer(600, fired.set)  # what Snakemake's job rate limiter leaves, non-daemon
    timer.start()
    assert cancel_rescheduling_timers() >= 1
    timer.join(timeout=10)
    assert not timer.is_alive() and not fired.is_set()
