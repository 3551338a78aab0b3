"""Pictures: attention heatmaps and training curves as PNG or SVG (matplotlib, an optional extra:
`pip install 'nmtkit[plots]'`), and a sparkline for terminals. matplotlib is imported only here, only when a
picture is asked for; everything else in nmtkit works without it. Images are written atomically.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

from nmtkit.errors import ConfigError
from nmtkit.files import atomic_write

log = logging.getLogger("nmtkit")
FORMATS = (".png", ".svg")
BARS = "▁▂▃▄▅▆▇█"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise ConfigError("PNG/SVG output needs matplotlib: pip install 'nmtkit[plots]' (or pip install matplotlib)") from None
    return plt


def _save(fig, path: str | Path) -> None:
    """Write the figure; characters the font lacks (Hangul, CJK with matplotlib's default font) give one
    warning line instead of one per glyph."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"{path}: choose a .png or .svg file name")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:].lower(), bbox_inches="tight", dpi=150))
    if any("missing from font" in str(w.message) for w in caught):
        log.warning("%s: some characters have no glyph in matplotlib's font and show as boxes; install a font that "
                    "has them (e.g. Noto Sans CJK) and set matplotlib's font.family", path)


def heatmap(weights: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], path: str | Path,
            title: str = "") -> None:
    """A T x S heatmap, query tokens down the side, key tokens along the top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(cols) + 1.5), max(3.0, 0.4 * len(rows) + 1.2)))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=cols, rotation=60, ha="right")
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.xaxis.tick_top()
    ax.set_title(title, pad=32 if title else 6)
    fig.colorbar(image, ax=ax, fraction=0.04)
    _save(fig, path)
    plt.close(fig)


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], metric: str, path: str | Path) -> None:
    """Several runs' (steps, values) of one metric on one chart."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in series.items():
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """Values as a row of block characters, resampled to at most `width` (lowest ▁, highest █)."""
    if not values:
        return ""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / span * len(BARS)))] for v in values)
