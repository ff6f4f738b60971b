"""The asynchronous actor / learner over stand-in blocking envs: every env step reaches the
replay exactly once, slow and failing envs stall nobody, errors and Ctrl-C stop every thread."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections import Counter

import jax
import numpy as np
import pytest
from async_envs import NUM_ACTIONS, OBS_DIM, CountingEnv, interrupt_after, small_agent, written

from hmk8s.train.actor_learner.core import (
    advance_books,
    chunk_sizes,
    make_async_fns,
    new_books,
    owed_updates,
)
from hmk8s.train.actor_learner.env_worker import no_hint
from hmk8s.train.actor_learner.loop import AsyncSettings, train_async

BOUND_S = 20.0


@pytest.fixture(scope="module")
def fns4():
    return make_async_fns(NUM_ACTIONS, small_agent(), 4)


def fresh_state(fns):
    return fns.init(jax.random.PRNGKey(0), np.zeros(OBS_DIM, np.float32))


def settings(**changes) -> AsyncSettings:
    base = {"total_steps": 200, "ratio": 1.0, "max_seconds": BOUND_S, "shutdown_timeout_s": 10.0}
    return AsyncSettings(**{**base, **changes})


def check_every_step_written_once(envs, state) -> None:
    """Each env's steps, as the env counted them, are the replay's writes, one for one."""
    replay = written(state.buffer)
    books = state.env_state
    assert [e.steps for e in envs] == [int(n) for n in books.env_steps]
    assert len(replay.obs) == sum(e.steps for e in envs) == int(state.env_steps)
    ids = Counter((int(o[0]), int(o[1])) for o in replay.obs)
    assert max(ids.values()) == 1, "a transition was written twice"
    assert set(ids) == {(e.index, k) for e in envs for k in range(e.steps)}
    successors = {(int(o[0]), int(o[1])) for o in replay.next_obs}
    assert successors == {(e.index, k + 1) for e in envs for k in range(e.steps)}


def test_books_open_a_new_episode_after_a_cut_or_an_end():
    books = new_books(2)
    books, place = advance_books(books, 0, 1.0, done=False, first=True)
    assert place == (0, 0, 0, 1.0)
    books, place = advance_books(books, 0, 2.0, done=True, first=False)
    assert place == (1, 0, 1, 3.0)
    assert books.episode[0] == 1 and books.episode_step[0] == 0 and books.episodes_done[0] == 1
    books, place = advance_books(books, 0, 1.0, done=False, first=True)
    assert place == (2, 1, 0, 1.0)
    books, place = advance_books(books, 0, 1.0, done=False, first=True)
    assert place == (3, 2, 0, 1.0), "a reset inside an episode cuts it"
    assert books.episodes_done[0] == 1 and books.env_steps.tolist() == [4, 0]


def test_update_to_data_ratio_and_replay_chunks():
    assert owed_updates(written=10, updates=0, ratio=0.5, learning_starts=20) == 0
    assert owed_updates(written=30, updates=2, ratio=0.5, learning_starts=20) == 3
    assert owed_updates(written=30, updates=9, ratio=0.5, learning_starts=20) == 0
    for n in (1, 7, 16, 100):
        sizes = chunk_sizes(n, 16)
        assert sum(sizes) == n and all(s <= 16 and s & (s - 1) == 0 for s in sizes)


def test_no_transition_lost_or_duplicated(fns4):
    envs = [CountingEnv(i, delay_s=0.002 * i, episode=5 + i) for i in range(4)]
    rows = []
    result = train_async(
        fns4,
        envs,
        no_hint,
        fresh_state(fns4),
        settings(),
        on_write=lambda record, place: rows.append((record.env, place.env_step)),
    )
    assert result.error is None and not result.abandoned
    assert result.env_steps == 200
    check_every_step_written_once(envs, result.state)
    for env in envs:
        assert [k for i, k in rows if i == env.index] == list(range(env.steps))
    assert result.updates > 0 and result.actor.calls < 200, "policy calls were not batched"


def test_the_learner_reprioritises_a_prioritised_replay():
    fns = make_async_fns(NUM_ACTIONS, small_agent(priority_exponent=0.6), 4)
    envs = [CountingEnv(i, episode=5 + i) for i in range(4)]
    result = train_async(fns, envs, no_hint, fresh_state(fns), settings())
    assert result.error is None and result.updates > 0
    check_every_step_written_once(envs, result.state)
    tree = result.state.buffer.sum_tree_state
    stored = np.asarray(tree.nodes)[-(2**tree.tree_depth) :]
    assert (stored[:200] > 0).all() and not stored[200:].any()  # the 200 written, no others
    # sampled items hold (|TD error| + eps)^0.6, not the largest priority new items get
    assert (stored[:200] < float(tree.max_recorded_priority)).sum() > 20


def test_the_replay_holds_the_penalised_reward_and_the_books_the_envs():
    fns = make_async_fns(NUM_ACTIONS, small_agent(sla_penalty=0.5), 2)
    envs = [CountingEnv(i, episode=4) for i in range(2)]
    returns = []
    result = train_async(
        fns,
        envs,
        no_hint,
        fresh_state(fns),
        settings(total_steps=60),
        on_write=lambda record, place: returns.append(place.episode_return),
    )
    assert result.error is None
    replay = written(result.state.buffer)
    violated = replay.next_obs[:, 1] % 3 == 0  # the env's steps after the transition
    assert violated.any() and not violated.all()
    expected = replay.action / NUM_ACTIONS - 0.5 * violated
    np.testing.assert_allclose(replay.reward, expected, atol=1e-6)  # float32
    # an episode's running return is the env's reward summed, penalty-free: at most 4 * 0.8
    assert min(returns) >= 0.0 and max(returns) <= 4 * (NUM_ACTIONS - 1) / NUM_ACTIONS


def test_slow_and_failing_envs_do_not_stall_the_others(fns4):
    gate = threading.Event()
    envs = [
        CountingEnv(0, always_fail=True),
        CountingEnv(1, gate=gate),
        CountingEnv(2, fail_every=4),
        CountingEnv(3),
    ]
    writes = []

    def release_the_hung_env_when_only_its_step_is_missing(record, place):
        writes.append(record)
        if len(writes) == 149:
            gate.set()

    result = train_async(
        fns4,
        envs,
        no_hint,
        fresh_state(fns4),
        settings(total_steps=150, max_env_failures=3, failure_backoff_s=0.01, allow_env_loss=True),
        on_write=release_the_hung_env_when_only_its_step_is_missing,
    )
    gate.set()
    assert result.error is None and not result.abandoned
    assert result.env_steps == 150, "the actor stalled behind a hung or failing env"
    assert envs[0].steps == 0 and result.env_failures[0] == 3
    assert envs[1].steps == 1, "the hung env held one action while the others did 149 steps"
    assert result.env_failures[2] > 0
    check_every_step_written_once(envs, result.state)
    books = result.state.env_state
    assert books.episode[2] > books.episodes_done[2], "failed steps cut env 2's episodes"


def test_every_env_failing_ends_the_run_with_an_error(fns4):
    envs = [CountingEnv(i, always_fail=True) for i in range(4)]
    lenient = settings(max_env_failures=2, failure_backoff_s=0, allow_env_loss=True)
    result = train_async(fns4, envs, no_hint, fresh_state(fns4), lenient)
    assert "every environment failed" in str(result.error)
    assert result.env_steps == 0 and not result.abandoned


def test_a_learner_error_stops_actor_and_envs(fns4):
    calls = []

    def broken_learn(*args):
        calls.append(1)
        if len(calls) > 5:
            raise FloatingPointError("diverged")
        return fns4.learn(*args)

    fns = dataclasses.replace(fns4, learn=broken_learn)
    envs = [CountingEnv(i, delay_s=0.002) for i in range(4)]
    result = train_async(fns, envs, no_hint, fresh_state(fns), settings(total_steps=10_000))
    assert isinstance(result.error, FloatingPointError)
    assert result.state is None, "a state the learner failed in is not checkpointed"
    assert not result.abandoned
    assert result.env_steps < 10_000


def test_ctrl_c_finishes_in_flight_steps_and_stops(fns4):
    envs = [CountingEnv(i, delay_s=0.01) for i in range(4)]
    interrupt_after(envs[0], 20)
    result = train_async(fns4, envs, no_hint, fresh_state(fns4), settings(total_steps=1_000_000))
    assert result.interrupted and result.error is None and not result.abandoned
    assert 0 < result.env_steps < 1_000_000
    check_every_step_written_once(envs, result.state)


def test_hints_travel_with_their_observations(fns4):
    envs = [CountingEnv(i, delay_s=0.001) for i in range(4)]

    def hint(env):
        return (env.index + env.steps) % NUM_ACTIONS

    result = train_async(fns4, envs, hint, fresh_state(fns4), settings(total_steps=40))
    replay = written(result.state.buffer)
    expected = (replay.next_obs[:, 0] + replay.next_obs[:, 1]).astype(int) % NUM_ACTIONS
    assert (replay.next_hint == expected).all()


def test_a_slow_learner_holds_the_envs_back_through_the_bounded_queue(fns4):
    def slow_learn(*args):
        threading.Event().wait(0.005)
        return fns4.learn(*args)

    fns = dataclasses.replace(fns4, learn=slow_learn)
    envs = [CountingEnv(i) for i in range(4)]
    rows = []
    ratio, burst, queue_size = 2.0, 2, 3
    result = train_async(
        fns,
        envs,
        no_hint,
        fresh_state(fns),
        settings(total_steps=120, ratio=ratio, burst=burst, queue_size=queue_size, log_every=1),
        on_log=rows.append,
    )
    assert result.error is None and result.env_steps == 120
    for row in rows:
        ahead = row["env_steps"] - fns.learning_starts - (row["updates"] + burst) / ratio
        assert ahead <= queue_size + 1, "envs ran ahead of the update-to-data ratio"


def test_sigterm_stops_like_ctrl_c_and_hands_back_system_exit(fns4):
    def raise_exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    envs = [CountingEnv(i, delay_s=0.01) for i in range(4)]
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        result = train_async(
            fns4, envs, no_hint, fresh_state(fns4), settings(total_steps=1_000_000)
        )
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(result.error, SystemExit) and not result.abandoned
    assert result.state is not None, "the state is still checkpointable"
    check_every_step_written_once(envs, result.state)
