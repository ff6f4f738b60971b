"""The action codec, `ActionLayout.check`, and the action mask on hand-built placements."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.domain.settings import params_from_usecase
from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE, ActionLayout, action_mask
from hmk8s.domain.usecases import load_usecase

pytestmark = pytest.mark.usefixtures("fast_compile")

ENC, DEC, FW = 0, 1, 2  # function indices (encrypt, decrypt, firewall)
SMALL, MEDIUM, LARGE = 0, 1, 2


def _layouts():
    for name in ("ehr", "ml", "stream"):
        for noop in (True, False):
            params = params_from_usecase(load_usecase(name), {"noop": noop})
            yield pytest.param(params.layout, id=f"{name}-noop={noop}")


@pytest.mark.parametrize("layout", list(_layouts()))
def test_round_trip_every_index(layout: ActionLayout):
    k, ops, c, f, p = layout.grid_shape
    # Lexicographic enumeration (cluster, op, config, function, proxy), proxy fastest: the
    # i-th tuple of this enumeration must be index i.
    expected = list(itertools.product(range(k), range(ops), range(c), range(f), range(p)))
    assert len(expected) == layout.num_grid
    assert layout.num_actions == len(expected) + int(layout.noop)

    dec = layout.decode(jnp.arange(layout.num_actions))
    got = np.stack([dec.cluster, dec.op, dec.config, dec.function, dec.proxy], axis=1)
    np.testing.assert_array_equal(got[: layout.num_grid], np.asarray(expected))
    assert not np.asarray(dec.noop[: layout.num_grid]).any()
    for index, coords in enumerate(expected):
        assert int(layout.encode(*coords)) == index
    if layout.noop:
        assert layout.noop_index == layout.num_grid
        assert bool(dec.noop[-1])
        assert got[-1].tolist() == [0, 0, 0, 0, 0]
    else:
        assert layout.noop_index == -1


def test_action_counts_by_hand():
    # K * 3 ops * C * F * P (+1 no-op): 3*3*3*3*3 = 243, 3*3*3*3*5 = 405
    assert ActionLayout(3, 3, 3, 3).num_actions == 244
    assert ActionLayout(3, 3, 3, 5).num_actions == 406
    assert ActionLayout(3, 3, 3, 5, noop=False).num_actions == 405


def test_encode_by_hand():
    lay = ActionLayout(clusters=3, configs=3, functions=3, proxies=5)
    # (((k*3 + op)*C + c)*F + f)*P + p with k=2, op=deploy(2), c=1, f=2, p=4:
    # ((2*3+2)*3+1) = 25; 25*3+2 = 77; 77*5+4 = 389
    assert lay.encode(2, OP_DEPLOY, 1, 2, 4) == 389
    d = lay.decode(389)
    assert (int(d.cluster), int(d.op), int(d.config), int(d.function), int(d.proxy)) == (
        2,
        2,
        1,
        2,
        4,
    )
    # no-op at 405 decodes to zeros with the flag set
    d = lay.decode(405)
    assert bool(d.noop) and int(d.cluster) == int(d.op) == int(d.proxy) == 0


@pytest.mark.parametrize("action", [0, 5, 243, np.int32(7), np.int64(243), jnp.int32(3), 4.0])
def test_check_accepts_integers(action):
    assert ActionLayout(3, 3, 3, 3).check(action) == int(action)


@pytest.mark.parametrize("action", [-1, 244, 1000, np.int64(244)])
def test_check_refuses_out_of_range(action):
    with pytest.raises(ValueError, match=r"outside the action space \[0, 244\)"):
        ActionLayout(3, 3, 3, 3).check(action)


def test_check_refuses_the_noop_index_without_noop():
    lay = ActionLayout(3, 3, 3, 3, noop=False)
    with pytest.raises(ValueError, match=r"outside the action space \[0, 243\)"):
        lay.check(243)


@pytest.mark.parametrize("action", [1.5, "3", None, np.array([1, 2]), float("nan"), [1]])
def test_check_refuses_non_integers(action):
    with pytest.raises(ValueError, match="action must be an integer index"):
        ActionLayout(3, 3, 3, 3).check(action)


def test_check_refuses_infinity_with_a_clear_message():
    with pytest.raises(ValueError, match="action must be an integer index"):
        ActionLayout(3, 3, 3, 3).check(float("inf"))


def test_mask_by_hand():
    lay = ActionLayout(clusters=3, configs=3, functions=3, proxies=2)
    replicas = np.zeros((3, 3, 3), np.int32)
    replicas[0, FW, MEDIUM] = 2  # firewall exists on cluster 0 (medium)
    replicas[1, DEC, SMALL] = 1  # decrypt exists, but decrypt is not in the chain
    replicas[2, ENC, LARGE] = 10  # cluster 2 is full (max_pods = 10)
    in_chain = jnp.asarray([True, False, True])  # encrypt, firewall
    mask = np.asarray(action_mask(lay, jnp.asarray(replicas), 10, in_chain))
    assert mask.shape == (lay.num_actions,) == (163,)  # 3*3*3*3*2 + 1

    allowed = set()
    for p in range(2):
        # remove / assign need an existing instance of a chain function
        for op in (OP_REMOVE, OP_ASSIGN):
            allowed.add(int(lay.encode(0, op, MEDIUM, FW, p)))
            allowed.add(int(lay.encode(2, op, LARGE, ENC, p)))
        # deploy needs room (clusters 0: 2 pods, 1: 1 pod) and a chain function, any config
        for k in (0, 1):
            for c in range(3):
                for f in (ENC, FW):
                    allowed.add(int(lay.encode(k, OP_DEPLOY, c, f, p)))
    allowed.add(162)  # the no-op
    # 2 proxies * (4 remove/assign + 2 clusters * 3 configs * 2 functions) + 1 = 2*16 + 1 = 33
    assert len(allowed) == 33
    assert set(np.flatnonzero(mask).tolist()) == allowed
