"""Shifted loads: the test scenarios an agent trained on a use case's own load never saw.

Each scenario changes only a few array fields of `EnvParams` (`SHIFT_FIELDS`, never a shape or
a static field), so the scenarios of a use case stack into one pytree (`stacked`) and one
compiled rollout runs them all under `jax.vmap`. Times are steps of an episode of
``episode_steps``:

- ``peak_x2``: every rate doubled, peaks included;
- ``flash_crowd_x5``: five times the rate for ``FLASH_STEPS`` steps from mid-episode;
- ``phase_shift``: every proxy's diurnal wave half a period later (night where it was day);
- ``slow_ramp``: the rate grows linearly to twice its value by the episode's end;
- ``capacity_loss``: from mid-episode, the busiest proxy's home cluster serves at half speed
  (half its nodes gone, its pods sharing what is left).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from hmk8s.domain.params import EnvParams

#: steps a flash crowd lasts (a minute of 15 s steps)
FLASH_STEPS = 4


def _peak_x2(p: EnvParams) -> EnvParams:
    return p.replace(load_scale=p.load_scale * 2.0)


def _flash_crowd_x5(p: EnvParams) -> EnvParams:
    return p.replace(
        flash_start=jnp.int32(p.episode_steps // 2),
        flash_steps=jnp.int32(FLASH_STEPS),
        flash_factor=jnp.float32(5.0),
    )


def _phase_shift(p: EnvParams) -> EnvParams:
    return p.replace(phase=p.phase + jnp.pi)


def _slow_ramp(p: EnvParams) -> EnvParams:
    return p.replace(ramp=jnp.float32(1.0))


def _capacity_loss(p: EnvParams) -> EnvParams:
    busiest = p.home[jnp.argmax(p.base_rate)]
    return p.replace(
        capacity_loss=jnp.zeros_like(p.capacity_loss).at[busiest].set(0.5),
        capacity_loss_step=jnp.int32(p.episode_steps // 2),
    )


SCENARIOS: dict[str, Callable[[EnvParams], EnvParams]] = {
    "peak_x2": _peak_x2,
    "flash_crowd_x5": _flash_crowd_x5,
    "phase_shift": _phase_shift,
    "slow_ramp": _slow_ramp,
    "capacity_loss": _capacity_loss,
}


class ScenarioError(ValueError):
    """A scenario name that is not one of `SCENARIOS`."""


def check_scenarios(names: Sequence[str]) -> list[str]:
    """``names`` as a list, or a `ScenarioError` naming the first unknown one."""
    for name in names:
        if name not in SCENARIOS:
            raise ScenarioError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return list(names)


#: the `EnvParams` fields a scenario may change
SHIFT_FIELDS = (
    "load_scale",
    "ramp",
    "flash_start",
    "flash_steps",
    "flash_factor",
    "phase",
    "capacity_loss",
    "capacity_loss_step",
)


def stacked(params: EnvParams, names: Sequence[str]) -> dict[str, jax.Array]:
    """The `SHIFT_FIELDS` of each scenario in ``names``, stacked on a leading axis (in that
    order): ``jax.vmap`` over them with `shifted` leaves every other field of ``params`` as it
    is, concrete under ``jit``."""
    each = [SCENARIOS[name](params) for name in check_scenarios(names)]
    return {f: jnp.stack([jnp.asarray(getattr(p, f)) for p in each]) for f in SHIFT_FIELDS}


def shifted(params: EnvParams, shift: dict[str, jax.Array]) -> EnvParams:
    """``params`` with one scenario's fields (an entry of `stacked`)."""
    return params.replace(**shift)
