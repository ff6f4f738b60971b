"""Calibrated baselines: each baseline's knobs tuned per use case, as an operator would tune them.

A knob grid is scored on the *validation* episodes (the curve episodes, which the held-out test
episodes never overlap) and the setting with the highest mean episode return wins (ties: the
first in grid order). The whole grid of one baseline runs as one compiled rollout, the knobs
``vmap``-ed as traced arrays. The calibrated policy is then scored on the test episodes beside
its default, like every other policy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hmk8s.configs import default
from hmk8s.domain.params import EnvParams
from hmk8s.policies.baselines import Policy, hpa_exact_policy, hpa_policy, static_policy
from hmk8s.policies.rollout import ROLLOUT_COMPILER_OPTIONS, rollout
from hmk8s.sim.env import ClusterEnv

#: the suffix of a calibrated baseline's name (``hpa_exact_calibrated``)
CALIBRATED = "_calibrated"


@dataclass
class CalibrationGrid:
    """The knob values tried: the HPA's target utilisation, tolerance and scale-down
    stabilisation window (for `hpa` and `hpa_exact`), and `static`'s headroom."""

    targets: list[float] = default("evaluate.calibration.targets", root="evaluate")
    tolerances: list[float] = default("evaluate.calibration.tolerances", root="evaluate")
    windows_s: list[float] = default("evaluate.calibration.windows_s", root="evaluate")
    headrooms: list[float] = default("evaluate.calibration.headrooms", root="evaluate")


def _hpa_knobs(grid: CalibrationGrid) -> dict[str, list[float]]:
    combos = list(itertools.product(grid.targets, grid.tolerances, grid.windows_s))
    return {
        "target_utilisation": [c[0] for c in combos],
        "tolerance": [c[1] for c in combos],
        "stabilisation_s": [c[2] for c in combos],
    }


def tunable(grid: CalibrationGrid) -> dict[str, tuple[Callable[..., Policy], dict[str, list]]]:
    """Per tuned baseline: its policy factory (knobs as keyword arguments) and the knob grid,
    one list per knob, element i of each list making setting i."""
    longest = max(grid.windows_s)

    def hpa(**knobs: Any) -> Policy:
        return hpa_policy(**knobs, longest_window_s=longest)

    def hpa_exact(**knobs: Any) -> Policy:
        return hpa_exact_policy(**knobs, longest_window_s=longest)

    return {
        "hpa": (hpa, _hpa_knobs(grid)),
        "hpa_exact": (hpa_exact, _hpa_knobs(grid)),
        "static": (static_policy, {"headroom": list(grid.headrooms)}),
    }


def score_grid(
    env: ClusterEnv,
    params: EnvParams,
    make: Callable[..., Policy],
    knobs: dict[str, Sequence[float]],
    key: jax.Array,
    episodes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean episode return and SLA violation rate of every setting of ``knobs`` on the
    ``episodes`` episodes of ``key``, [settings] each, in one compiled program."""

    def one(values: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        records = rollout(env, params, make(**values), key, episodes)
        return records["reward"].sum(axis=1).mean(), records["sla_violated"].mean()

    arrays = {name: jnp.asarray(v, jnp.float32) for name, v in knobs.items()}
    run = jax.jit(jax.vmap(one), compiler_options=ROLLOUT_COMPILER_OPTIONS)
    returns, sla = run(arrays)
    return np.asarray(returns), np.asarray(sla)


def calibrate(
    env: ClusterEnv,
    params: EnvParams,
    key: jax.Array,
    episodes: int,
    grid: CalibrationGrid,
) -> tuple[dict[str, Policy], dict[str, Any]]:
    """The calibrated policy of each tunable baseline (named ``<baseline>_calibrated``) and, for
    results.json, per baseline: the chosen knobs, their validation return and SLA violation
    rate, how they were chosen, and every setting's scores."""
    policies, report = {}, {}
    for name, (make, knobs) in tunable(grid).items():
        returns, sla = score_grid(env, params, make, knobs, key, episodes)
        report[name] = choose(knobs, returns, sla, episodes)
        policies[name + CALIBRATED] = make(**report[name]["knobs"])
    return policies, report


def choose(
    knobs: dict[str, Sequence[float]], returns: np.ndarray, sla: np.ndarray, episodes: int
) -> dict[str, Any]:
    """The setting with the highest validation return (the first of a tie), its scores, how it
    was chosen and every setting's scores."""
    best = int(np.argmax(returns))
    return {
        "knobs": {k: float(v[best]) for k, v in knobs.items()},
        "validation_return": float(returns[best]),
        "validation_sla": float(sla[best]),
        "chosen_by": f"highest mean return on the {episodes} validation episodes "
        "(the curve episodes, disjoint from the test episodes) over the grid",
        "grid": {
            **{k: list(v) for k, v in knobs.items()},
            "validation_return": np.asarray(returns).tolist(),
            "validation_sla": np.asarray(sla).tolist(),
        },
    }
