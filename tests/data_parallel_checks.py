"""Measurements of the data-parallel trainer on 4 forced CPU devices, printed as one JSON line.

JAX fixes its device count when it starts, and the test suite runs on one device, so
`test_data_parallel` runs this file in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and checks what it prints.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from counting import SMALL, counting_env
from jax.sharding import PartitionSpec as P

from hmk8s.agents.parts import make_agent_parts
from hmk8s.agents.replay import Transition
from hmk8s.train.anakin.loop import init_seeds, make_chunk_fn, make_trainer
from hmk8s.train.anakin.mesh import DATA_AXIS, SEED_AXIS, make_mesh

DEVICES = 4
BATCH = 16
OBS = 3
ACTIONS = 4


def random_batch(key: jax.Array, rows: int) -> Transition:
    k = jax.random.split(key, 5)
    return Transition(
        obs=jax.random.normal(k[0], (rows, OBS)),
        action=jax.random.randint(k[1], (rows,), 0, ACTIONS),
        reward=jax.random.normal(k[2], (rows,)),
        terminated=jax.random.bernoulli(k[3], 0.2, (rows,)),
        next_obs=jax.random.normal(k[4], (rows, OBS)),
        next_mask=jnp.ones((rows, ACTIONS), bool),
        next_hint=jnp.full((rows,), -1, jnp.int32),
    )


def max_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def shard_spread(tree) -> float:
    """Largest difference between any device's copy of a replicated array and device 0's."""
    out = 0.0
    for leaf in jax.tree.leaves(tree):
        copies = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(copies) == DEVICES
        out = max(out, *(float(np.max(np.abs(c - copies[0]))) for c in copies))
    return out


def replica_spread(tree) -> float:
    """Largest difference between copies of the same block of an array (the devices of one
    mesh row hold the same seed's learner)."""
    out = 0.0
    for leaf in jax.tree.leaves(tree):
        blocks: dict[tuple, list[np.ndarray]] = {}
        for s in leaf.addressable_shards:
            blocks.setdefault(tuple((i.start, i.stop) for i in s.index), []).append(s.data)
        assert all(len(copies) == 2 for copies in blocks.values()), blocks.keys()
        for first, *rest in blocks.values():
            out = max(out, *(float(np.max(np.abs(np.asarray(c) - first))) for c in rest))
    return out


def update_checks() -> dict[str, float]:
    """One update on 4 devices against the same update on 1 device."""
    single = make_agent_parts(SMALL, ACTIONS)
    parallel = make_agent_parts(SMALL, ACTIONS, axis_name=DATA_AXIS)
    learner = single.init_learner(jax.random.PRNGKey(0), jnp.zeros((OBS,)))
    one_step = jax.jit(single.update)
    mesh = make_mesh(DEVICES)

    def on_devices(learner, batches):
        local = jax.tree.map(lambda x: x[0], batches)
        return parallel.update(learner, local, jnp.float32(0.0))[0]

    sharded = jax.jit(
        jax.shard_map(on_devices, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P())
    )
    same = random_batch(jax.random.PRNGKey(1), BATCH)
    stacked_same = jax.tree.map(lambda x: jnp.stack([x] * DEVICES), same)
    split = random_batch(jax.random.PRNGKey(2), DEVICES * BATCH)
    stacked_split = jax.tree.map(lambda x: x.reshape(DEVICES, BATCH, *x.shape[1:]), split)
    after_same = sharded(learner, stacked_same)
    after_split = sharded(learner, stacked_split)
    own_batch = jax.tree.map(lambda x: x[0], stacked_split)
    return {
        "same_data_diff": max_diff(after_same.params, one_step(learner, same, 0.0)[0].params),
        # the loss is a batch mean, so the mean of 4 batches' gradients is the gradient of
        # their concatenation: the 4-device step is the 1-device step on all 4 batches
        "split_data_diff": max_diff(after_split.params, one_step(learner, split, 0.0)[0].params),
        "split_vs_first_batch_diff": max_diff(
            after_split.params, one_step(learner, own_batch, 0.0)[0].params
        ),
        "update_shard_spread": shard_spread(after_split.params),
    }


def loop_checks(iters: int) -> dict[str, float]:
    """A data-parallel run of the Anakin loop on the counting env, 2 seeds on 4 devices."""
    trainer = make_trainer(counting_env(True), SMALL, num_envs=8, devices=DEVICES)
    state = init_seeds(trainer, 0, 2)
    keys = np.asarray(state.rng).reshape(-1, 2)
    state, metrics = make_chunk_fn(trainer, iters)(state)
    return {
        "distinct_keys": len({tuple(k) for k in keys.tolist()}),
        "keys": len(keys),
        "updates": int(np.asarray(metrics["updates"])[0]),
        "updates_per_iter": trainer.updates_per_iter,
        "learning_starts": SMALL.learning_starts,
        "env_steps": int(np.asarray(metrics["env_steps"])[0]),
        "episodes": int(np.asarray(metrics["episodes"])[0]),
        "learner_shard_spread": shard_spread(state.learner),
        "local_envs": int(state.obs.shape[2]),
        "replay_rows": int(state.buffer.experience.obs.shape[3]),  # [device, seed, 1, row]
        "finite_loss": bool(np.isfinite(np.asarray(metrics["loss"])).all()),
    }


def prioritised_checks(iters: int) -> dict[str, float]:
    """The same run with prioritised replay: each device keeps the sum tree of its own shard."""
    agent = dataclasses.replace(SMALL, priority_exponent=0.6, priority_beta=0.4)
    trainer = make_trainer(counting_env(True), agent, num_envs=8, devices=DEVICES)
    state, metrics = make_chunk_fn(trainer, iters)(init_seeds(trainer, 0, 2))
    tree = state.buffer.sum_tree_state
    stored = np.asarray(tree.nodes)[..., -(2**tree.tree_depth) :]  # [device, seed, leaf]
    return {
        "per_updates": int(np.asarray(metrics["updates"])[0]),
        "per_finite_loss": bool(np.isfinite(np.asarray(metrics["loss"])).all()),
        "per_learner_shard_spread": shard_spread(state.learner),
        "per_leaves": list(stored.shape),
        "per_positive_leaves": int((stored > 0).sum()),
        "per_distinct_trees": len({leaves.tobytes() for leaves in stored.reshape(-1, 16)}),
        "per_root_vs_leaves": float(
            np.max(np.abs(np.asarray(tree.nodes)[..., 0] - stored.sum(-1)))
        ),
    }


def seed_axis_checks(iters: int) -> dict[str, float]:
    """2 seeds split over the mesh's seed axis (2 rows of 2 data-parallel devices) against the
    same 2 seeds batched on each of 2 data-parallel devices: the same runs, placed apart."""
    batched = make_trainer(counting_env(True), SMALL, num_envs=8, devices=2)
    split = make_trainer(counting_env(True), SMALL, num_envs=8, devices=4, seed_devices=2)
    runs = {}
    for name, trainer in (("batched", batched), ("split", split)):
        state = init_seeds(trainer, 0, 2)
        keys = np.asarray(state.rng).reshape(-1, 2)
        state, metrics = make_chunk_fn(trainer, iters)(state)
        runs[name] = (state, metrics, keys)
    (b_state, b_metrics, _), (s_state, s_metrics, s_keys) = runs["batched"], runs["split"]
    kernel = jax.tree.leaves(s_state.learner.params)[0]  # [seed, ...], one seed per mesh row
    rows = np.asarray(split.mesh.devices)
    return {
        "seed_mesh_shape": dict(split.mesh.shape),
        "seed_params_diff": max_diff(s_state.learner.params, b_state.learner.params),
        "seed_metrics_diff": max_diff(s_metrics, b_metrics),
        "seed_updates": int(np.asarray(s_metrics["updates"])[1]),
        "seed_rows_hold_their_seed": all(
            {
                d
                for d in kernel.sharding.devices_indices_map(kernel.shape)
                if kernel.sharding.devices_indices_map(kernel.shape)[d][0] == slice(s, s + 1)
            }
            == set(rows[s].tolist())
            for s in range(2)
        ),
        "seed_replica_spread": replica_spread(s_state.learner),
        "seed_runs_differ": max_diff(
            jax.tree.map(lambda x: x[0], s_state.learner.params),
            jax.tree.map(lambda x: x[1], s_state.learner.params),
        ),
        "seed_keys": len(s_keys),
        "seed_distinct_keys": len({tuple(k) for k in s_keys.tolist()}),
        "seed_axis_size": int(split.mesh.shape[SEED_AXIS]),
    }


if __name__ == "__main__":
    jax.config.update("jax_disable_most_optimizations", True)
    assert jax.device_count() == DEVICES, jax.devices()
    iters = int(sys.argv[1])
    out = {
        **update_checks(),
        **loop_checks(iters),
        **prioritised_checks(iters // 10),
        **seed_axis_checks(iters // 5),
    }
    print(json.dumps(out))
