"""Each figure of `hmk8s.evaluate.plots` is a PNG of the size its figsize and DPI give."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from hmk8s.evaluate import plots
from hmk8s.evaluate.stats import Interval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which follows the 8-byte signature and 8 bytes of
    chunk length and type."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE
    return struct.unpack(">II", head[16:24])


def test_learning_curves_png(tmp_path):
    steps = np.array([0, 100, 200])
    bands = {
        "dqn": (np.array([0.0, 5, 9]), np.array([-1.0, 4, 8]), np.array([1.0, 6, 10])),
        "haql": (np.array([3.0, 9, 10]), np.array([2.0, 8, 9]), np.array([4.0, 10, 11])),
    }
    path = plots.learning_curves(
        tmp_path / "curves.png", steps, bands, {"hpa": 7.0, "random": -2.0}, "ml", seeds=3
    )
    # figsize (8, 5) inches at 100 dpi
    assert png_size(path) == (800, 500)
    assert path.stat().st_size > 10_000


def test_policy_bars_png(tmp_path):
    metrics = {
        name: {
            "return": Interval(v, v - 1, v + 1),
            "sla_violation_rate": Interval(0.1, 0.05, 0.2),
            "mean_pods": Interval(v / 10, v / 10, v / 10),
        }
        for name, v in (("dqn", 50.0), ("haql", 60.0), ("hpa", 40.0), ("random", -20.0))
    }
    path = plots.policy_bars(tmp_path / "bars.png", metrics, "ml")
    # three panels of 4.2 x 4.2 inches at 100 dpi
    assert png_size(path) == (1260, 420)
    assert path.stat().st_size > 10_000


def test_episode_timeline_png(tmp_path):
    steps = 20
    t = np.arange(steps)
    episode = {
        "rates": np.stack([50 + 10 * np.sin(t / 3), 40 + 0 * t, 30 + 0 * t], axis=1),
        "pods_per_cluster": np.stack([t % 4, 2 + 0 * t, 1 + 0 * t], axis=1),
        "latency_ratio": 0.5 + 0.1 * t,
    }
    path = plots.episode_timeline(tmp_path / "timeline.png", {"haql": episode, "hpa": episode}, "x")
    # two columns of 6 x 8 inches at 100 dpi
    assert png_size(path) == (1200, 800)
    assert path.stat().st_size > 10_000
