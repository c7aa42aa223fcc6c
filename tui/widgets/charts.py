"""Charts drawn with text: a braille line chart for loss curves and horizontal bars for metrics."""

from __future__ import annotations

import itertools
import math

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

# Braille dot bits by (x % 2, y % 4) inside one character cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_PARTIAL = " ▏▎▍▌▋▊▉"


def _fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def braille_plot(points: list[tuple[float, float]], width: int, height: int,
                 y_range: tuple[float, float]) -> list[str]:
    """Rows of braille characters drawing ``points`` joined by straight lines."""
    px_w, px_h = width * 2, height * 4
    cells = [[0] * width for _ in range(height)]
    xs = [p[0] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range

    def to_px(x: float, y: float) -> tuple[int, int]:
        fx = 0.5 if x1 == x0 else (x - x0) / (x1 - x0)
        fy = 0.5 if y1 == y0 else (y - y0) / (y1 - y0)
        return round(fx * (px_w - 1)), round((1 - fy) * (px_h - 1))

    def dot(px: int, py: int) -> None:
        if 0 <= px < px_w and 0 <= py < px_h:
            cells[py // 4][px // 2] |= _DOTS[px % 2][py % 4]

    pixels = [to_px(x, y) for x, y in points]
    if len(pixels) == 1:
        dot(*pixels[0])
    for (ax, ay), (bx, by) in itertools.pairwise(pixels):
        steps = max(abs(bx - ax), abs(by - ay), 1)
        for i in range(steps + 1):
            dot(round(ax + (bx - ax) * i / steps), round(ay + (by - ay) * i / steps))
    return ["".join(chr(0x2800 + bits) if bits else " " for bits in row) for row in cells]


class LineChart(Widget):
    """A line chart of (x, y) points with a title, y labels at the top and bottom and the x range."""

    DEFAULT_CSS = """
    LineChart { height: 8; }
    """

    points: reactive[tuple[tuple[float, float], ...]] = reactive(tuple)

    def __init__(self, title: str, x_label: str = "step", *, color: str = "bright_cyan",
                 empty: str = "no data yet", name: str | None = None, id: str | None = None,
                 classes: str | None = None):
        super().__init__(name=name, id=id, classes=classes)
        self.title, self.x_label, self.color, self.empty = title, x_label, color, empty

    def set_points(self, points: list[tuple[float, float]]) -> None:
        self.points = tuple((float(x), float(y)) for x, y in points if y is not None and math.isfinite(y))

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        text = Text(no_wrap=True, overflow="crop")
        head = Text(self.title, style="bold")
        if self.points:
            first, last = self.points[0][1], self.points[-1][1]
            head.append(f"  {_fmt(first)} → {_fmt(last)}", style="dim")
        text.append_text(head)
        if height < 3 or width < 12:
            return text
        plot_h = height - 2
        if not self.points:
            text.append("\n" * (plot_h // 2 + 1) + self.empty.center(width), style="dim italic")
            return text
        ys = [p[1] for p in self.points]
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-9:
            y0, y1 = y0 - 0.5, y1 + 0.5
        labels = [_fmt(y1), _fmt(y0)]
        label_w = max(len(s) for s in labels)
        plot_w = max(4, width - label_w - 2)
        rows = braille_plot(list(self.points), plot_w, plot_h, (y0, y1))
        for i, row in enumerate(rows):
            label = labels[0] if i == 0 else labels[1] if i == plot_h - 1 else ""
            text.append("\n" + label.rjust(label_w) + " ┤", style="dim")
            text.append(row, style=self.color)
        xs = [p[0] for p in self.points]
        left = f"{self.x_label} {_fmt(min(xs))}"
        right = _fmt(max(xs))
        gap = max(1, plot_w - len(left) - len(right))
        text.append("\n" + " " * (label_w + 2) + left + " " * gap + right, style="dim")
        return text


class BarChart(Widget):
    """Horizontal bars, one per label, scaled to the largest value; ``None`` shows as n/a."""

    DEFAULT_CSS = """
    BarChart { height: auto; min-height: 3; }
    """

    bars: reactive[tuple[tuple[str, float | None], ...]] = reactive(tuple, layout=True)

    def __init__(self, title: str = "", bars: list[tuple[str, float | None]] | None = None, *,
                 name: str | None = None, id: str | None = None, classes: str | None = None):
        super().__init__(name=name, id=id, classes=classes)
        self.title = title
        self.set_reactive(BarChart.bars, tuple(bars or ()))

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self.bars) + 1

    def render(self) -> Text:
        text = Text(self.title, style="bold", no_wrap=True, overflow="crop")
        if not self.bars:
            return text
        label_w = max(len(label) for label, _ in self.bars)
        values = [v for _, v in self.bars if v is not None]
        top = max(values) if values else 0.0
        low = min(values + [0.0])
        value_w = max((len(_fmt(v)) for v in values), default=3)
        bar_w = max(4, self.size.width - label_w - value_w - 3)
        palette = ["bright_blue", "bright_magenta", "bright_green", "bright_yellow",
                   "bright_cyan", "bright_red"]
        for i, (label, value) in enumerate(self.bars):
            text.append("\n" + label.ljust(label_w) + " ")
            if value is None:
                text.append("n/a".rjust(value_w + 1 + bar_w), style="dim")
                continue
            span = top - low if top > low else (abs(top) or 1.0)
            fraction = max(0.0, (value - low) / span) if top > low else (1.0 if value else 0.0)
            eighths = round(fraction * bar_w * 8)
            bar = "█" * (eighths // 8) + (_PARTIAL[eighths % 8] if eighths % 8 else "")
            text.append(bar.ljust(bar_w), style=palette[i % len(palette)])
            text.append(" " + _fmt(value).rjust(value_w))
        return text
