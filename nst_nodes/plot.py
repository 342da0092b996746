"""A picture of an optimization's history: every loss term per evaluation, on a log scale."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .types import History

Series = Literal["loss", "content", "style", "tv"]  # the History lists plotted

COLOURS: dict[Series, tuple[int, int, int]] = {
    "loss": (20, 20, 20),
    "content": (31, 119, 180),
    "style": (230, 120, 20),
    "tv": (44, 160, 44),
}
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 30, 62


def plot_history(history: History, width: int = 640, height: int = 400) -> torch.Tensor:
    """``[1, height, width, 3]`` IMAGE: one line per term (total in black), x = evaluation, y = log10."""
    series = {
        name: [(i, v) for i, v in enumerate(history.get(name, [])) if v > 0 and math.isfinite(v)] for name in COLOURS
    }  # a log scale shows positive values only; each keeps its evaluation index
    series = {name: points for name, points in series.items() if points}
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    font_size = max(10, height // 32)
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM
    steps = history.get("steps", 0)
    draw.text(
        (left, 6),
        f"{history.get('method', '')} loss per evaluation, log scale ({steps} steps)",
        fill=(0, 0, 0),
        font=font,
    )
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    if not series or right - left < 10 or bottom - top < 10:
        draw.text((left + 8, top + 8), "no finite positive losses to plot", fill=(0, 0, 0), font=font)
        return _tensor(picture)

    values = [v for points in series.values() for _, v in points]
    low, high = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    high = max(high, low + 1)
    count = max(len(history.get(name, [])) for name in series)

    def x_of(index: int) -> float:
        return left + (right - left) * (index / max(count - 1, 1))

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * (math.log10(value) - low) / (high - low)

    step = max(1, math.ceil((high - low) / 8))
    for decade in range(low, high + 1, step):
        y = y_of(10.0**decade)
        draw.line((left, y, right, y), fill=(225, 225, 225))
        draw.text((6, y - font_size / 2), f"1e{decade}", fill=(80, 80, 80), font=font)
    draw.text((left, bottom + 6), "1", fill=(80, 80, 80), font=font)
    draw.text((right - 40, bottom + 6), f"{count}", fill=(80, 80, 80), font=font)
    draw.text(((left + right) // 2 - 30, bottom + 6), "evaluation", fill=(80, 80, 80), font=font)

    for name, points in series.items():
        line = [(x_of(i), y_of(v)) for i, v in points]
        draw.line(line if len(line) > 1 else line * 2, fill=COLOURS[name], width=3 if name == "loss" else 2)
    legend_x, legend_y = left, bottom + font_size + 14  # one row under the axis, the final value of each term
    for name, points in series.items():
        draw.line(
            (legend_x, legend_y + font_size // 2, legend_x + 20, legend_y + font_size // 2), fill=COLOURS[name], width=3
        )
        label = f"{name} {points[-1][1]:.3g}"
        draw.text((legend_x + 26, legend_y), label, fill=(0, 0, 0), font=font)
        legend_x += 40 + int(draw.textlength(label, font=font))
    return _tensor(picture)


def _tensor(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).unsqueeze(0)
