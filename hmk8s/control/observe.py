"""What the controller shows of itself: Prometheus metrics, a JSON-lines decision log and a live
view in the terminal. Each is a sink of `hmk8s.control.loop.Controller`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hmk8s.control.agent import action_text
from hmk8s.control.guard import Verdict
from hmk8s.control.loop import Decision, Outcome, Reading
from hmk8s.domain.params import EnvParams

PREFIX = "hmk8s_controller"
CONTROLLER = "chaincontroller"  # the `controller` label of controller-runtime's metrics


class ControllerMetrics:
    """The controller's Prometheus metrics, in a registry of their own: hmk8s's own, and
    controller-runtime's reconcile metrics (one step is one reconcile; ``error`` when an API
    call failed), so dashboards made for Go controllers read it as they are."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            ["controller", "result"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            ["controller"],
            registry=r,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            ["controller"],
            registry=r,
        )
        self.applied = Counter(f"{PREFIX}_actions_applied", "Changes applied", registry=r)
        self.refused = Counter(
            f"{PREFIX}_refusals", "Agent actions the guard refused", ["reason"], registry=r
        )
        self.fallbacks = Counter(
            f"{PREFIX}_fallbacks", "Refusals the fallback acted on", ["policy"], registry=r
        )
        self.api_errors = Counter(f"{PREFIX}_api_errors", "Failed API operations", registry=r)
        self.latency_ratio = Gauge(
            f"{PREFIX}_latency_ratio", "Latency / SLA ratio per proxy", ["proxy"], registry=r
        )
        self.sla_violations = Counter(
            f"{PREFIX}_sla_violations", "Steps with a proxy over its SLA", ["proxy"], registry=r
        )
        self.pods = Gauge(f"{PREFIX}_pods", "Pods per cluster", ["cluster"], registry=r)
        self.paused = Gauge(f"{PREFIX}_paused", "1 while the kill switch is on", registry=r)
        self.decision_seconds = Histogram(
            f"{PREFIX}_decision_seconds", "Time to choose and check an action", registry=r
        )
        self.apply_seconds = Histogram(
            f"{PREFIX}_apply_seconds", "Time to apply an action", registry=r
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose the metrics on ``http://addr:port/metrics``."""
        start_http_server(port, addr=addr, registry=self.registry)

    def record(self, decision: Decision, outcome: Outcome, after: Reading) -> None:
        result = "error" if outcome.errors else "success"
        self.reconciles.labels(CONTROLLER, result).inc()
        if outcome.errors:
            self.reconcile_errors.labels(CONTROLLER).inc()
        self.reconcile_time.labels(CONTROLLER).observe(decision.seconds + outcome.seconds)
        proposed = decision.explanation.action
        if not decision.verdict.allowed and not _noop(proposed, decision):
            self.refused.labels(decision.verdict.reason).inc()
        if decision.source == "fallback":
            self.fallbacks.labels(decision.fallback_policy).inc()
        if outcome.changed and not outcome.dry_run:
            self.applied.inc()
        self.api_errors.inc(len(outcome.errors))
        self.decision_seconds.observe(decision.seconds)
        self.apply_seconds.observe(outcome.seconds)
        self.paused.set(float(decision.reading.health.paused))
        if after.obs is None:
            return
        for p, ratio in enumerate(np.asarray(after.obs.latency_ratio)):
            self.latency_ratio.labels(str(p)).set(float(ratio))
            if ratio > 1.0:
                self.sla_violations.labels(str(p)).inc()
        for k, pods in enumerate(np.asarray(after.obs.pods)):
            self.pods.labels(str(k)).set(float(pods))


def _noop(action: int, decision: Decision) -> bool:
    return action < 0 or action == decision.noop


def _verdict(v: Verdict | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"allowed": v.allowed, "reason": v.reason, "detail": v.detail, "hold": v.hold}


def observation_summary(reading: Reading) -> dict[str, Any]:
    """The part of an observation an operator reads first."""
    obs = reading.obs
    h = reading.health
    out: dict[str, Any] = {
        "paused": h.paused,
        "assumed": list(h.assumed),
        "api_errors": list(h.api_errors),
        "conflicts": list(h.conflicts),
    }
    if obs is None:
        return out
    return {
        "pods": np.asarray(obs.pods).tolist(),
        "latency_ratio": np.round(np.asarray(obs.latency_ratio, np.float64), 4).tolist(),
        "rates": np.round(np.asarray(obs.rates, np.float64), 2).tolist(),
        "broken_hops": int((np.asarray(obs.routes) < 0).sum()),
        **out,
    }


def decision_record(
    decision: Decision, outcome: Outcome, after: Reading, params: EnvParams
) -> dict[str, Any]:
    """One line of the decision log."""
    e = decision.explanation
    layout = params.layout
    return {
        "time": decision.time,
        "step": decision.step,
        "observation": observation_summary(decision.reading),
        "top": [{"action": c.action, "q": c.q, "score": c.score, "text": c.text} for c in e.top],
        "hint": {"action": e.hint, "text": e.hint_text, "allowed": e.hint_allowed},
        "bonus": e.bonus,
        "proposed": {"action": e.action, "text": action_text(layout, e.action)},
        "verdict": _verdict(decision.verdict),
        "held": _verdict(decision.held),
        "fallback": None
        if decision.fallback is None
        else {
            "policy": decision.fallback_policy,
            "action": decision.fallback,
            "text": action_text(layout, decision.fallback),
            "verdict": _verdict(decision.fallback_verdict),
        },
        "chosen": {
            "action": decision.action,
            "text": action_text(layout, decision.action),
            "source": decision.source,
        },
        "changed": outcome.changed,
        "changes": [str(c) for c in outcome.changes],
        "dry_run": outcome.dry_run,
        "api": {"ok": not outcome.errors, "errors": outcome.errors, "invalid": outcome.invalid},
        "reward": after.reward,
        "latency_ratio": after.latency_ratio,
    }


class DecisionLog:
    """Appends one JSON object per step to ``path`` (flushed, so ``tail -f`` follows it)."""

    def __init__(self, path: str | Path, params: EnvParams) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.params = params
        self._file = self.path.open("a")

    def record(self, decision: Decision, outcome: Outcome, after: Reading) -> None:
        line = decision_record(decision, outcome, after, self.params)
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class DryRunPrinter:
    """A dry run's plan on the console: each step's changes and why."""

    def __init__(self, params: EnvParams, console: Console | None = None) -> None:
        self.params = params
        self.console = console or Console()

    def record(self, decision: Decision, outcome: Outcome, after: Reading) -> None:
        e = decision.explanation
        text = action_text(self.params.layout, decision.action)
        verdict = decision.verdict
        why = "" if verdict.allowed else f"  [refused: {verdict.reason}: {verdict.detail}]"
        self.console.print(f"[bold]step {decision.step}[/] {decision.source}: {text}{why}")
        top = ", ".join(f"{c.text} (Q {c.q:.3g})" for c in e.top)
        self.console.print(f"  top: {top}; rulebook: {e.hint_text}")
        for change in outcome.changes or ["(no change)"]:
            self.console.print(f"  {change}")
        for error in outcome.errors:
            self.console.print(f"  [red]the API would refuse: {error}[/]")


class LiveView:
    """A table of the last steps, redrawn in place (for a terminal)."""

    ROWS = 12

    def __init__(self, params: EnvParams, console: Console | None = None) -> None:
        self.params = params
        self.rows: list[tuple[str, ...]] = []
        self._live = Live(self._table(), console=console or Console(), auto_refresh=False)
        self._live.start()

    def _table(self) -> Table:
        table = Table(title="hmk8s controller", expand=True)
        for name in ("step", "chosen", "by", "verdict", "pods", "latency/SLA", "reward"):
            table.add_column(name)
        for row in self.rows[-self.ROWS :]:
            table.add_row(*row)
        return table

    def record(self, decision: Decision, outcome: Outcome, after: Reading) -> None:
        v = decision.verdict
        pods = "" if after.obs is None else str(int(np.asarray(after.obs.pods).sum()))
        ratio = "" if after.latency_ratio is None else f"{after.latency_ratio:.2f}"
        r = "" if after.reward is None else f"{after.reward:.3f}"
        verdict = "ok" if v.allowed else str(v.reason)
        text = action_text(self.params.layout, decision.action)
        stamp = time.strftime("%H:%M:%S", time.localtime(decision.time))
        row = (f"{decision.step} {stamp}", text, decision.source, verdict, pods, ratio, r)
        self.rows.append(row)
        self._live.update(self._table(), refresh=True)

    def close(self) -> None:
        self._live.stop()
