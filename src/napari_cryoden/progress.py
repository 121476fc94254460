"""Long jobs are generators of progress events.

A core routine ``iter_something(...)`` yields :class:`ProgressEvent` objects and *returns* its result (the
generator's ``StopIteration.value``). :func:`run` consumes such a generator synchronously; the CLI drives it
with a progress bar (:func:`run_with_bar`); the napari plugin wraps it in a ``thread_worker``, whose
``quit()`` stops it at the next ``yield``. Stopping early raises nothing inside the generator except
``GeneratorExit`` at the ``yield``, so routines must write outputs only after their last ``yield`` or
inside an :class:`~napari_cryoden.io.mrc.AtomicOutput` block (which removes the partial file).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long job.

    Attributes
    ----------
    stage
        What is running, e.g. "train", "predict", "align".
    step, total
        Steps done and expected (``total`` 0 when unknown).
    loss
        Current training loss, when there is one.
    elapsed, eta
        Seconds since the stage started and the estimated seconds left (None when unknown).
    preview
        Optional small array to show (e.g. the central slice of the current prediction, input units).
    info
        Anything else worth showing (learning rate, best score, ...).
    """

    stage: str
    step: int
    total: int = 0
    loss: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    preview: np.ndarray | None = field(default=None, repr=False, compare=False)
    info: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """How far the stage is, in [0, 1]: elapsed / (elapsed + ETA) when an ETA is known — so a training
        that will stop at its time budget shows the budget's share, not steps of an epoch count it will
        never reach — else steps / total; None when neither is known."""
        if self.eta is not None and self.elapsed > 0:
            return min(1.0, max(self.step / self.total if self.total else 0.0,
                                self.elapsed / (self.elapsed + self.eta)))
        return None if not self.total else min(1.0, self.step / self.total)

    @property
    def rate(self) -> float | None:
        """Measured steps per second of this stage (None before the first step)."""
        return self.step / self.elapsed if self.step and self.elapsed > 0 else None


class StageClock:
    """Builds events with elapsed time and a linear ETA for one stage."""

    def __init__(self, stage: str, total: int = 0, *, time_budget: float | None = None):
        self.stage, self.total, self.time_budget = stage, total, time_budget
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def event(self, step: int, *, loss: float | None = None, preview=None, total: int | None = None,
              **info) -> ProgressEvent:
        total = self.total if total is None else total
        elapsed = self.elapsed
        eta = None
        if total and step > 0:
            eta = elapsed / step * max(0, total - step)
        if self.time_budget is not None:
            left = max(0.0, self.time_budget - elapsed)
            eta = left if eta is None else min(eta, left)
        return ProgressEvent(self.stage, step, total, loss, elapsed, eta, preview, info)


def run(gen: Generator[ProgressEvent, None, T], on_event: Callable[[ProgressEvent], Any] | None = None) -> T:
    """Consume a progress generator and return its result, calling ``on_event`` for each event."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def as_stage(gen: Generator[ProgressEvent, None, T], stage: str) -> Generator[ProgressEvent, None, T]:
    """``gen``'s events under another stage name (a sub-job shown as a stage of its own); returns its result.
    Closing this generator (a cancel) closes ``gen``."""
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            yield dataclasses.replace(event, stage=stage)
    finally:
        gen.close()


def format_seconds(seconds: float | None) -> str:
    """``45s``, ``3m07s``, ``1h02m``; ``?`` when unknown (progress bars and rows)."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def run_with_bar(gen: Generator[ProgressEvent, None, T], *, disable: bool = False) -> T:
    """Consume a progress generator with one tqdm bar per stage (on stderr); returns its result."""
    import sys

    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def show(ev: ProgressEvent) -> None:
        if ev.info.get("message") and not disable:  # a line worth keeping (e.g. the noise measured), above the bars
            tqdm.write(str(ev.info["message"]), file=sys.stdout)
        # The bar shows the event's own fraction, step count, measured rate and ETA (which knows a time budget);
        # tqdm's rate would count jumps of the step counter as speed ("8289 step/s").
        bar = bars.get(ev.stage)
        if bar is None:
            bar = bars[ev.stage] = tqdm(total=1000, desc=ev.stage, file=sys.stderr, disable=disable,
                                        dynamic_ncols=True, bar_format="{desc} {percentage:3.0f}%|{bar}|{postfix}")
        fraction = ev.fraction
        bar.n = int(round(1000 * fraction)) if fraction is not None else 0
        parts = [f"{ev.step}/{ev.total}" if ev.total else f"{ev.step}"]
        if ev.rate is not None:
            parts.append(f"{ev.rate:.3g} step/s" if ev.rate >= 1 else f"{1 / ev.rate:.3g} s/step")
        parts.append(f"elapsed {format_seconds(ev.elapsed)}")
        if ev.eta is not None:
            parts.append(f"ETA {format_seconds(ev.eta)}")
        if ev.loss is not None:
            parts.append(f"loss {ev.loss:.4g}")
        bar.set_postfix_str(", ".join(parts), refresh=False)
        bar.refresh()

    try:
        return run(gen, show)
    finally:
        for bar in bars.values():
            bar.close()
