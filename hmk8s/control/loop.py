"""The controller loop, the same for every backend: observe, let the agent choose, guard, fall
back, apply.

A `Backend` hides where the clusters are (the simulator, or real ones through the API); the
`Controller` only sees `Reading`s and hands back one action a step. Sinks (metrics, the decision
log, the live view) see every step's decision, what applying it did and the reading after it.
"""

from __future__ import annotations

import functools
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from threading import Event
from typing import Any, Protocol

import jax

from hmk8s.control.agent import Agent, Explanation
from hmk8s.control.changes import Change
from hmk8s.control.config import GuardConfig
from hmk8s.control.guard import ALLOWED, Health, Verdict, check, hold_reason
from hmk8s.domain.observation import Observation, chain_latency_ratio
from hmk8s.domain.params import EnvParams
from hmk8s.domain.reward import reward
from hmk8s.policies.baselines import Policy, heuristic_policy, hpa_policy

FALLBACK_POLICIES = {"heuristic": heuristic_policy, "hpa": hpa_policy}


@dataclass(frozen=True)
class Reading:
    """What a backend saw: the observation (None once a rehearsal has run out of steps), the
    reward and request-weighted latency / SLA ratio of the step that led to it (None at the
    first reading), and how trustworthy it is."""

    obs: Observation | None
    reward: float | None = None
    latency_ratio: float | None = None
    health: Health = field(default_factory=Health)


@dataclass(frozen=True)
class Outcome:
    """What applying one action did: whether it changed the placement (would have, in a dry
    run), the changes sent (retries of earlier failed calls included), the failed API calls
    (retried next step), and whether the domain found the action invalid."""

    changed: bool
    changes: list[Change]
    errors: list[str] = field(default_factory=list)
    invalid: bool = False
    dry_run: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class Decision:
    """One step's choice: the agent's explanation, the guard's verdict on it, the fallback's
    action and verdict when it was asked, and the action handed to the backend. ``held`` is the
    hold in force this step (no change could pass it), whatever the agent proposed."""

    step: int
    time: float
    reading: Reading
    explanation: Explanation
    verdict: Verdict
    held: Verdict | None
    fallback: int | None
    fallback_verdict: Verdict | None
    fallback_policy: str
    action: int
    noop: int
    seconds: float

    @property
    def source(self) -> str:
        """Who chose the action applied: ``agent``, ``fallback`` or ``hold`` (a no-op)."""
        if self.verdict.allowed:
            return "agent"
        if self.fallback is not None and self.fallback_verdict is not None:
            return "fallback" if self.fallback_verdict.allowed else "hold"
        return "hold"


class Backend(Protocol):
    params: EnvParams
    dry_run: bool

    def observe(self) -> Reading:
        """The clusters now (after the last step's time has passed)."""
        ...

    def apply(self, action: int) -> Outcome:
        """Carry the action out (or, in a dry run, only plan and check it)."""
        ...


class Sink(Protocol):
    def record(self, decision: Decision, outcome: Outcome, after: Reading) -> None: ...


@dataclass
class Summary:
    """Tallies of a run: return, SLA violations, changes, refusals by reason, fallbacks."""

    steps: int = 0
    total_reward: float = 0.0
    sla_violations: int = 0
    changes: int = 0
    refusals: Counter = field(default_factory=Counter)
    fallbacks: int = 0
    api_errors: int = 0

    @property
    def sla_violation_rate(self) -> float:
        return self.sla_violations / self.steps if self.steps else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "return": self.total_reward,
            "sla_violation_rate": self.sla_violation_rate,
            "changes": self.changes,
            "refusals": dict(self.refusals),
            "fallbacks": self.fallbacks,
            "api_errors": self.api_errors,
        }


def step_score(obs: Observation, params: EnvParams) -> tuple[float, float]:
    """(reward, request-weighted latency / SLA ratio) of an observation, as the envs score it."""
    reward_value, ratio = _score(obs, params)
    return float(reward_value), float(ratio)


@jax.jit
def _score(obs: Observation, params: EnvParams) -> tuple[jax.Array, jax.Array]:
    ratio = chain_latency_ratio(obs)
    pods = obs.pods.sum()
    r = reward(pods, ratio, alpha=params.alpha, beta=params.beta, pods_max=params.pods_max)
    return r, ratio


@functools.cache
def compiled_fallback(name: str) -> tuple[Policy, Any]:
    """The fallback policy and its jitted ``act``, one per process: a new controller (a
    leader taking over) reuses what an earlier one compiled."""
    policy = FALLBACK_POLICIES[name]()
    return policy, jax.jit(policy.act)


def is_change(action: int, params: EnvParams) -> bool:
    return action >= 0 and action != params.layout.noop_index


class Controller:
    """The agent behind the guard rails, with a fallback policy for refused actions."""

    def __init__(
        self,
        agent: Agent,
        guard: GuardConfig,
        fallback: str = "heuristic",
        sinks: Sequence[Sink] = (),
    ) -> None:
        self.agent = agent
        self.params = agent.env_params
        self.sinks = list(sinks)
        self.summary = Summary()
        self._reading: Reading | None = None
        self._window: deque[bool] = deque()
        self.configure(guard, fallback)

    def configure(self, guard: GuardConfig, fallback: str) -> None:
        """Take new guard settings and fallback between steps (a ChainController edited),
        keeping the change window and, for the same fallback, its state."""
        self.guard = guard
        self._window = deque(self._window, maxlen=max(guard.window_steps - 1, 0))
        if getattr(self, "fallback_name", None) == fallback:
            return
        self.fallback_name = fallback
        self._fallback: Policy | None = None
        self._fallback_state: Any = None
        if fallback in FALLBACK_POLICIES:
            self._fallback, self._fallback_act = compiled_fallback(fallback)
            self._fallback_state = self._fallback.init(self.params)

    def forget_reading(self) -> None:
        """Decide the next step on a fresh reading (the settings it was taken under changed)."""
        self._reading = None

    @property
    def noop(self) -> int:
        return self.params.layout.noop_index

    def decide(self, reading: Reading, step: int = 0) -> Decision:
        """The action to apply after ``reading``: the agent's if the guard allows it, else the
        fallback's if the guard allows that, else the no-op."""
        started = time.perf_counter()
        obs = reading.obs
        explanation = self.agent.explain(obs)
        fallback_action = self._advance_fallback(obs)
        recent = sum(self._window)
        verdict = self._check(explanation.action, obs, reading.health, recent)
        fallback, fallback_verdict, action = None, None, explanation.action
        if not verdict.allowed:
            action = self.noop
            if not verdict.hold and fallback_action is not None:
                fallback = fallback_action
                fallback_verdict = self._check(fallback, obs, reading.health, recent)
                if fallback_verdict.allowed:
                    action = fallback
        return Decision(
            step=step,
            time=time.time(),
            reading=reading,
            explanation=explanation,
            verdict=verdict,
            held=hold_reason(reading.health, self.guard),
            fallback=fallback,
            fallback_verdict=fallback_verdict,
            fallback_policy=self.fallback_name,
            action=int(action),
            noop=self.noop,
            seconds=time.perf_counter() - started,
        )

    def _check(self, action: int, obs: Observation, health: Health, recent: int) -> Verdict:
        if self.guard.enabled or health.paused:
            return check(action, obs, self.params, self.guard, health, recent)
        return ALLOWED

    def _advance_fallback(self, obs: Observation) -> int | None:
        """The fallback's action; stateful fallbacks (the HPA's window) see every step."""
        if self._fallback is None:
            return None
        action, self._fallback_state = self._fallback_act(
            jax.random.PRNGKey(0), self._fallback_state, obs, self.params
        )
        return int(action)

    def record(self, decision: Decision, outcome: Outcome, after: Reading) -> None:
        """Tally the step and hand it to every sink."""
        self._window.append(outcome.changed)
        s = self.summary
        s.steps += 1
        s.changes += int(outcome.changed)
        s.api_errors += len(outcome.errors)
        if not decision.verdict.allowed and is_change(decision.explanation.action, self.params):
            s.refusals[decision.verdict.reason] += 1
        if decision.source == "fallback":
            s.fallbacks += 1
        if after.reward is not None:
            s.total_reward += after.reward
        if after.latency_ratio is not None and after.latency_ratio > 1.0:
            s.sla_violations += 1
        for sink in self.sinks:
            sink.record(decision, outcome, after)

    def run(self, backend: Backend, steps: int | None = None, stop: Event | None = None) -> Summary:
        """Control ``backend`` for ``steps`` more steps (None: until stopped or out of steps).
        A later call goes on from the last reading."""
        reading = self._reading if self._reading is not None else backend.observe()
        done = 0
        while reading.obs is not None and (steps is None or done < steps):
            if stop is not None and stop.is_set():
                break
            decision = self.decide(reading, self.summary.steps)
            outcome = backend.apply(decision.action)
            reading = backend.observe()
            self.record(decision, outcome, reading)
            done += 1
        self._reading = reading
        return self.summary
