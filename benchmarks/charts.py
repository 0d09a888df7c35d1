"""PNG charts for the benchmark results (matplotlib, headless).

Each scenario script calls :func:`grouped_bars` with its medians and spreads; the chart is
written next to the markdown table under ``benchmarks/results/``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path


def grouped_bars(
    path: Path,
    title: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[Sequence[float]]],
    ylabel: str,
) -> Path | None:
    """Bars per group (x axis) and series (colour): median height, min-max error bars.

    ``series[name][i]`` holds the repeated measurements of ``groups[i]`` (empty: no bar).
    Returns the written path, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None

    names = list(series)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(len(names), 1) * 0.6), 4))
    for index, name in enumerate(names):
        xs, heights, low, high = [], [], [], []
        for position, values in enumerate(series[name]):
            if not values:
                continue
            median = statistics.median(values)
            xs.append(position - 0.4 + width * (index + 0.5))
            heights.append(median)
            low.append(median - min(values))
            high.append(max(values) - median)
        ax.bar(xs, heights, width, yerr=[low, high], capsize=3, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def processor_chart(json_path: Path) -> Path | None:
    """The chart of a ``processor-<protocol>-<date>.json`` result (written beside it)."""
    import json

    results = json.loads(json_path.read_text())
    concurrencies = sorted({int(c) for points in results.values() for c in points})
    groups = [f"c={c}" for c in concurrencies]
    series = {
        name: [[r["throughput"] for r in points.get(str(c), [])] for c in concurrencies]
        for name, points in results.items()
    }
    protocol = json_path.stem.split("-")[1].upper()
    title = f"Identity Python model, {protocol}, perf_analyzer ({json_path.stem[-10:]})"
    return grouped_bars(json_path.with_suffix(".png"), title, groups, series, "infer/s")


if __name__ == "__main__":
    import sys

    # Re-draw the charts of saved processor results: charts.py results/processor-*.json
    for name in sys.argv[1:]:
        print(processor_chart(Path(name)))
