"""The job runner owns the job state; the one progress row follows it in every widget."""

from __future__ import annotations

import time

import pytest

from napari_cryoden.errors import CryodenInputError
from napari_cryoden.progress import StageClock

PLUGIN = "napari-cryoden"


def _slow_job(steps: int = 200, pause: float = 0.05):
    def job():
        clock = StageClock("work", steps)
        for i in range(steps):
            time.sleep(pause)
            yield clock.event(i + 1, loss=1.0 / (i + 1))
        return "result"

    return job


def test_runner_states_and_the_row_follow_done_failed_cancelled(qtbot, monkeypatch):
    from napari_cryoden._plugin import jobs
    from napari_cryoden._plugin.jobs import JobRunner, JobState
    from napari_cryoden._plugin.widgets._progress import ProgressRow

    monkeypatch.setattr(jobs, "notify_error", lambda exc: None)
    monkeypatch.setattr(jobs, "notify_info", lambda text: None)
    row = ProgressRow()
    qtbot.addWidget(row)
    runner = JobRunner(on_event=row.update)
    row.follow(runner)
    seen = []
    runner.on_state(lambda state, text: seen.append(state))

    results = []
    runner.start(_slow_job(3, 0.01), on_done=results.append, stage="preparing")
    assert row.bar.format() == "preparing" and row.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: runner.state is JobState.DONE, timeout=30_000)
    assert results == ["result"] and row.bar.format() == "done" and row.label.text() == ""

    def failing():
        yield StageClock("work", 1).event(0)
        raise CryodenInputError("x.mrc", "bad")

    runner.start(failing)
    qtbot.waitUntil(lambda: runner.state is JobState.FAILED, timeout=30_000)
    assert row.bar.format() == "failed" and not row.cancel_button.isEnabled()

    runner.start(_slow_job())
    qtbot.waitUntil(lambda: row.label.text().startswith("ETA"), timeout=30_000)
    row.cancel_button.click()
    assert runner.state is JobState.CANCELLED
    assert row.bar.format() == "cancelled" and row.label.text() == ""  # no stale "ETA 9s"
    assert seen == [JobState.RUNNING, JobState.DONE, JobState.RUNNING, JobState.FAILED, JobState.RUNNING,
                    JobState.CANCELLED]


@pytest.mark.parametrize("kind", ["tomogram", "particle stack"])
def test_simulate_yields_progress_and_cancels(make_napari_viewer, qtbot, kind):
    from napari_cryoden._plugin.jobs import JobState

    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Simulate")
    w.kind.value = kind
    events = []
    w.runner.on_event = lambda ev: (events.append(ev), w.progress.update(ev))
    w.run()
    qtbot.waitUntil(lambda: w.runner.state is not JobState.RUNNING, timeout=300_000)
    assert w.runner.state is JobState.DONE and events and events[-1].fraction == pytest.approx(1.0)
    assert w.progress.bar.format() == "done"
    n_layers = len(viewer.layers)
    w.run()
    w.runner.cancel()  # before its first stage ends
    qtbot.wait(500)
    assert w.runner.state is JobState.CANCELLED and w.progress.bar.format() == "cancelled"
    assert len(viewer.layers) == n_layers  # the cancelled run added nothing


CLOSE_MID_JOB = """
import time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=False)
viewer.add_image(np.random.default_rng(0).standard_normal((32, 64, 64)).astype(np.float32), name="noisy")
_, w = viewer.window.add_plugin_dock_widget("napari-cryoden", "Denoise")
w.image.value = viewer.layers["noisy"]
w.method.value = "self2self"  # a method that trains, so the job runs long enough to be closed mid-way
w.run("train")
app = QApplication.instance()
end = time.time() + 120
while not w.progress.label.text().startswith("ETA") and time.time() < end:  # training for real
    app.processEvents()
    time.sleep(0.02)
assert w.runner.running, "the job should still be running"
runner = w.runner
viewer.close()  # the user closes napari mid-job
for _ in range(60):
    app.processEvents()
    time.sleep(0.05)
print("state", runner.state.value, flush=True)
"""


def test_closing_the_viewer_mid_job_cancels_it_cleanly(tmp_path):
    # In a subprocess: before the fix the job's next event reached a deleted progress bar and PyQt aborted the
    # whole process (exit 134).
    import os
    import subprocess
    import sys

    script = tmp_path / "close_mid_job.py"
    script.write_text(CLOSE_MID_JOB)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CRYODEN_CONFIG_DIR": str(tmp_path)})
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "state cancelled" in done.stdout
    assert "has been deleted" not in done.stderr
