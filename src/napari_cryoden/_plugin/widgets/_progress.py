"""The progress row every widget shows: bar, ETA / loss text and a Cancel button. It follows a
:class:`~napari_cryoden._plugin.jobs.JobRunner` (:meth:`ProgressRow.follow`): the runner's events move the bar,
its state sets the row's start and end ("done", "failed", "cancelled"), and Cancel cancels its job."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from ...progress import ProgressEvent, format_seconds

#: The words the row shows for the core's stage names ("training 40/1000" rather than "train 40/1000").
STAGE_WORDS = {"train": "training", "distill": "distilling", "partner": "partner (R2R)",
               "predict": "predicting", "denoise": "denoising", "align": "aligning",
               "prealign": "pre-aligning", "refine": "refining classes", "mra": "classifying (MRA)",
               "simulate": "simulating", "averages": "class averages", "cluster": "clustering"}


class ProgressRow(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        self.bar.setFormat("idle")
        self.label = QLabel("")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        layout.addWidget(self.bar, 3)
        layout.addWidget(self.label, 2)
        layout.addWidget(self.cancel_button)

    def follow(self, runner) -> None:
        """Show ``runner``'s jobs: its state changes start and end the row, Cancel stops its job. Events reach
        the row through :meth:`update` (the widget passes them on, as it may also plot them)."""
        from ..jobs import JobState

        def changed(state, text):
            if state is JobState.RUNNING:
                self.start(text or "preparing")
            elif state is not JobState.IDLE:
                self.finish(state.value)

        runner.on_state(changed)
        self.cancel_button.clicked.connect(runner.cancel)
        # Closing the dock or the viewer deletes this row (and the widget around it) while a job may still run:
        # the runner must let go of every callback first, or the job's next event lands on a deleted Qt object.
        self.destroyed.connect(lambda *_: runner.detach())

    def start(self, text: str = "starting") -> None:
        self.bar.setValue(0)
        self.bar.setFormat(text)
        self.label.setText("")
        self.cancel_button.setEnabled(True)

    def update(self, ev: ProgressEvent) -> None:
        frac = ev.fraction
        if frac is None:
            self.bar.setRange(0, 0)  # busy indicator
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(frac * 1000))
        word = STAGE_WORDS.get(ev.stage, ev.stage)
        self.bar.setFormat(f"{word} {ev.step}/{ev.total}" if ev.total else f"{word} {ev.step}")
        parts = [f"ETA {format_seconds(ev.eta)}"] if ev.eta is not None else []
        if ev.loss is not None:
            parts.append(f"loss {ev.loss:.4g}")
        self.label.setText("  ".join(parts))

    def finish(self, text: str = "done") -> None:
        self.bar.setRange(0, 1000)
        self.bar.setValue(1000 if text == "done" else self.bar.value())
        self.bar.setFormat(text)
        self.label.setText("")  # no stale "ETA 57s" after the end
        self.cancel_button.setEnabled(False)
