"""One job runner for every widget: a core progress generator in a napari ``thread_worker``.

* Yielded :class:`~napari_cryoden.progress.ProgressEvent`s arrive on the main thread (``on_event``).
* The generator's return value arrives on the main thread (``on_done``); layers are made only there.
* Cancel calls ``worker.quit()``, which stops the generator at its next ``yield`` (so a core routine writing
  a file inside an atomic block leaves nothing behind).
* Starting a new job cancels the running one; events and results of a superseded job are dropped.
* Errors become napari notifications (one line for input errors), never tracebacks in a dialog.
* When a job ends (done, failed or cancelled) the cached GPU memory is released.
* The runner owns the job's :class:`JobState` (idle → running → done / failed / cancelled) and tells its
  listeners (:meth:`JobRunner.on_state`) of every change; the progress row follows it, so no widget writes
  the row's end state itself.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Generator

from napari.qt.threading import GeneratorWorker, create_worker

from .notify import notify_error, notify_info

log = logging.getLogger(__name__)


_QUIT_GUARD = False


def _wait_for_workers_on_quit() -> None:
    """Once per process: when the application quits, give cancelled jobs up to 30 s to reach their next
    ``yield`` and stop, instead of tearing Qt down under a running worker thread."""
    global _QUIT_GUARD
    if _QUIT_GUARD:
        return
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        return
    app.aboutToQuit.connect(lambda: QThreadPool.globalInstance().waitForDone(30_000))
    _QUIT_GUARD = True


def release_gpu_memory() -> None:
    """Give cached GPU memory back to the driver once a job has ended (no-op without CUDA)."""
    import gc

    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


class JobState(enum.Enum):
    """Where a widget's job stands."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobRunner:
    """Runs at most one job at a time for a widget, and owns its :class:`JobState`."""

    def __init__(self, *, on_event: Callable | None = None, on_done: Callable | None = None,
                 on_finished: Callable | None = None):
        self.on_event, self.on_done, self.on_finished = on_event, on_done, on_finished
        self.worker: GeneratorWorker | None = None
        self._token = 0
        self.last_error: BaseException | None = None
        self.state = JobState.IDLE
        self._name = "job"
        self._listeners: list[Callable[[JobState, str], None]] = []

    def on_state(self, listener: Callable[[JobState, str], None]) -> None:
        """Call ``listener(state, text)`` on every change of state (``text``: the job's first words)."""
        self._listeners.append(listener)

    def remove_listener(self, listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def detach(self) -> None:
        """The widget is going away (its dock or the viewer closed): forget its callbacks and cancel the job,
        so nothing the job still emits reaches a deleted Qt object (which aborts the whole process)."""
        if not hasattr(self, "_listeners"):  # already torn down with its widget (Python finalised it first)
            return
        self._listeners.clear()
        self.on_event = self.on_done = self.on_finished = None
        self.cancel()

    def _set_state(self, state: JobState, text: str = "") -> None:
        self.state = state
        for listener in list(self._listeners):
            listener(state, text)

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_running

    def start(self, job: Callable[[], Generator], *, name: str = "job", on_done: Callable | None = None,
              stage: str = "preparing") -> GeneratorWorker:
        """Run ``job()`` (a function returning a progress generator) in a worker thread; ``stage`` is what the
        progress row says until the first event arrives."""
        self.cancel()
        self._token += 1
        token = self._token
        self.last_error = None
        self._name = name
        self._set_state(JobState.RUNNING, stage)

        def wrapped():
            result = yield from job()
            return result

        # _ignore_errors: our errored handler notifies; without it the error is also re-raised on the main
        # thread, where napari shows a traceback dialog.
        worker = create_worker(wrapped, _start_thread=False, _ignore_errors=True)
        done = on_done or self.on_done

        def _event(ev):
            if token == self._token and self.on_event is not None:
                self.on_event(ev)

        def _returned(result):
            if token != self._token:
                return
            try:
                if done is not None:
                    done(result)  # layers are made here, on the main thread
            except Exception as exc:  # a result that cannot be shown must not take the viewer down
                log.exception("showing the result of %s failed", name)
                self.last_error = exc
                notify_error(exc)
                self._set_state(JobState.FAILED)
                return
            self._set_state(JobState.DONE)

        def _errored(exc):
            if token == self._token:
                self.last_error = exc
                notify_error(exc)
                self._set_state(JobState.FAILED)

        def _finished():
            release_gpu_memory()  # also after an error or a Cancel: the job's tensors are gone now
            if token == self._token:
                self.worker = None
                if self.state is JobState.RUNNING:  # stopped without a result or an error
                    self._set_state(JobState.CANCELLED)
                if self.on_finished is not None:
                    self.on_finished()

        def _aborted():
            if token == self._token:
                notify_info(f"{name} cancelled")

        worker.yielded.connect(_event)
        worker.returned.connect(_returned)
        worker.errored.connect(_errored)
        worker.aborted.connect(_aborted)
        worker.finished.connect(_finished)
        self.worker = worker
        _wait_for_workers_on_quit()
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running job at its next step; its results will be dropped."""
        if self.worker is not None:
            worker = self.worker
            self._token += 1  # anything the old job still emits is ignored
            worker.quit()
            self.worker = None
            notify_info(f"{self._name} cancelled")
            self._set_state(JobState.CANCELLED)
            if self.on_finished is not None:
                self.on_finished()

    def wait(self, timeout_ms: int = 600_000) -> None:
        """Block until the running job finishes (tests and scripts)."""
        if self.worker is not None:
            self.worker.await_workers(msecs=timeout_ms)
