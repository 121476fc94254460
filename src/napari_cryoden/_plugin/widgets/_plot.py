"""A small live loss curve (matplotlib in Qt)."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure


class LossPlot(FigureCanvasQTAgg):
    def __init__(self, *, title: str = "training loss"):
        fig = Figure(figsize=(3.2, 1.8), dpi=90, tight_layout=True)
        super().__init__(fig)
        self.ax = fig.add_subplot(1, 1, 1)
        self.title = title
        self.steps: list[int] = []
        self.values: list[float] = []
        self.setMinimumHeight(140)
        self.clear()

    def clear(self) -> None:
        self.steps, self.values = [], []
        self.ax.clear()
        self.ax.set_title(self.title, fontsize=8)
        self.ax.tick_params(labelsize=7)
        (self.line,) = self.ax.plot([], [], lw=1)
        self.draw_idle()

    def add(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)
        if len(self.steps) % 5 == 1 or len(self.steps) < 5:
            self.line.set_data(self.steps, self.values)
            self.ax.relim()
            self.ax.autoscale_view()
            self.draw_idle()
