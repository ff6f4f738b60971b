"""Figures of an evaluation: learning curves, per-policy bars, one episode's timeline.

They use matplotlib's object API (no pyplot), so no global figure state or GUI backend.

Each function takes numbers already aggregated (see `hmk8s.evaluate.stats`) and writes one PNG,
so the figures are the only I/O here and what they show is computed (and tested) elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hmk8s.evaluate.stats import Interval

Band = tuple[np.ndarray, np.ndarray, np.ndarray]
AGENT_COLOURS = {"dqn": "tab:blue", "haql": "tab:orange"}
BASELINE_COLOURS = {
    "hpa": "tab:green",
    "heuristic": "tab:red",
    "static": "tab:purple",
    "random": "tab:gray",
}
DPI = 100


def _colour(name: str) -> str:
    return AGENT_COLOURS.get(name) or BASELINE_COLOURS.get(name, "black")


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def learning_curves(
    path: Path,
    steps: np.ndarray,
    bands: Mapping[str, Band],
    baselines: Mapping[str, float],
    title: str,
    seeds: int,
) -> Path:
    """IQM greedy return against env steps with its 95 % CI band per agent; each baseline's
    mean return on the same episodes as a dashed horizontal line."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for name, (mid, low, high) in bands.items():
        ax.plot(steps, mid, color=_colour(name), lw=2, label=f"{name.upper()} (IQM, {seeds} seeds)")
        ax.fill_between(steps, low, high, color=_colour(name), alpha=0.25)
    for name, value in baselines.items():
        ax.axhline(value, color=_colour(name), ls="--", lw=1.2, label=name)
    ax.set_xlabel("env steps per seed")
    ax.set_ylabel("greedy episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


BAR_METRICS = (
    ("return", "mean episode return"),
    ("sla_violation_rate", "SLA violation rate (fraction of steps)"),
    ("mean_pods", "mean pods"),
)


def policy_bars(path: Path, metrics: Mapping[str, Mapping[str, Interval]], title: str) -> Path:
    """One panel per metric (return, SLA violations, pods), one bar per policy: the IQM over
    seeds for agents (error bars: 95 % CI), the value on the same episodes for baselines."""
    names = list(metrics)
    fig = Figure(figsize=(4.2 * len(BAR_METRICS), 4.2))
    axes = fig.subplots(1, len(BAR_METRICS))
    x = np.arange(len(names))
    for ax, (key, label) in zip(axes, BAR_METRICS, strict=True):
        vals = [metrics[n][key] for n in names]
        mid = np.array([v.value for v in vals])
        err = np.array([[v.value - v.low for v in vals], [v.high - v.value for v in vals]])
        ax.bar(x, mid, yerr=err, capsize=4, color=[_colour(n) for n in names])
        ax.set_xticks(x, names, rotation=30)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def episode_timeline(
    path: Path, episodes: Mapping[str, Mapping[str, np.ndarray]], title: str
) -> Path:
    """The same episode under each policy (one column each): total request rate, pods per
    cluster, and the request-weighted latency / SLA ratio against the SLA (ratio 1) on a log
    axis, since a broken or overloaded chain sits at the timeout, an order of magnitude above."""
    names = list(episodes)
    fig = Figure(figsize=(6 * len(names), 8))
    axes = fig.subplots(3, len(names), sharex=True, squeeze=False)
    top_pods = max(float(np.max(e["pods_per_cluster"])) for e in episodes.values()) + 1
    top_ratio = max(2.0, *(float(np.max(e["latency_ratio"])) for e in episodes.values()))
    bottom_ratio = min(0.5, *(float(np.min(e["latency_ratio"])) for e in episodes.values()))
    for col, name in enumerate(names):
        ep = episodes[name]
        t = np.arange(len(ep["latency_ratio"]))
        load, pods, lat = axes[0, col], axes[1, col], axes[2, col]
        load.plot(t, np.asarray(ep["rates"]).sum(axis=-1), color="black")
        load.set_ylabel("load (requests/s)")
        load.set_title(name)
        per_cluster = np.asarray(ep["pods_per_cluster"])
        for k in range(per_cluster.shape[1]):
            pods.step(t, per_cluster[:, k], where="post", label=f"cluster {k}")
        pods.set_ylabel("pods")
        pods.set_ylim(0, top_pods)
        pods.legend(fontsize=8, loc="upper left")
        lat.plot(t, ep["latency_ratio"], color=_colour(name), label="latency / SLA")
        lat.axhline(1.0, color="red", ls="--", lw=1, label="SLA")
        lat.set_ylabel("latency / SLA (log scale)")
        lat.set_yscale("log")
        lat.set_ylim(bottom_ratio / 1.5, top_ratio * 1.5)
        lat.set_xlabel("step")
        lat.legend(fontsize=8, loc="upper left")
        for ax in (load, pods, lat):
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
