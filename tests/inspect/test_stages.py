"""score --timings' clock: stages add up to the wall time, blocks go to their stage, the start is the process's."""

from __future__ import annotations

import time

from ear_stream.inspect.stages import StageTimer, maybe_stage, process_age


def test_stages_add_up_to_the_wall_time():
    started = time.time()
    timer = StageTimer(started)
    time.sleep(0.02)
    timer.mark("start-up")
    with maybe_stage(timer, "U-Net"):
        time.sleep(0.03)
    with maybe_stage(None, "ignored"):  # nobody timing: nothing recorded
        pass
    time.sleep(0.01)
    timer.mark("write")
    assert list(timer.seconds) == ["start-up", "other", "U-Net", "write"]
    assert timer.seconds["U-Net"] >= 0.03 and timer.seconds["start-up"] >= 0.02 and timer.seconds["write"] >= 0.01
    assert abs(timer.total - (time.time() - started)) < 0.01
    table = timer.table(10)
    assert "U-Net" in table and "total" in table


def test_the_timer_starts_when_the_process_did():
    age = process_age()
    assert age is not None and 0.0 <= age < 3600  # this test process started within the hour
    timer = StageTimer.started_at_process_start()
    timer.mark("start-up")
    assert timer.seconds["start-up"] >= age - 0.05
