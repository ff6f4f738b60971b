"""Use cases: the shipped YAML, validation errors that name file and field, traces, env config."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import yaml

from hmk8s.domain.encoders import continuous
from hmk8s.domain.settings import EnvConfigError, params_from_usecase, validate_env_config
from hmk8s.domain.usecases import (
    NOISE_MAX,
    RATE_MAX,
    REWARD_WEIGHT_MAX,
    UseCaseError,
    available_usecases,
    load_usecase,
    read_trace,
)
from hmk8s.sim.dynamics import request_rates

pytestmark = pytest.mark.usefixtures("fast_compile")


def _write_yaml(tmp_path, mapping, name="custom.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return path


# --- the shipped use cases ------------------------------------------------------------------


def test_available_usecases_are_the_three_shipped_files():
    assert available_usecases() == ("ehr", "ml", "stream")


@pytest.mark.parametrize(
    ("name", "chain", "chain_indices", "proxies", "sla_ms"),
    [
        # FUNCTION_NAMES = (encrypt, decrypt, firewall) -> indices 0, 1, 2
        ("ehr", ("firewall", "decrypt", "encrypt"), (2, 1, 0), 3, 120.0),
        ("ml", ("firewall", "encrypt"), (2, 0), 3, 60.0),
        ("stream", ("encrypt", "firewall"), (0, 2), 5, 60.0),
    ],
)
def test_builtin_usecases_load(name, chain, chain_indices, proxies, sla_ms):
    uc = load_usecase(name)
    assert uc.name == name
    assert uc.chain == chain
    assert uc.chain_indices == chain_indices
    assert len(uc.proxies) == proxies
    assert uc.sla_ms == sla_ms
    assert uc.clusters.count == 3 and uc.clusters.max_pods == 10
    assert uc.reward.beta > uc.reward.alpha
    assert uc.trace is None


def test_params_from_ml_yaml_by_hand():
    params = params_from_usecase(load_usecase("ml"))
    # mu[f, c] from ml.yaml, f in (encrypt, decrypt, firewall), c in (small, medium, large)
    np.testing.assert_allclose(
        params.mu, [[40, 80, 150], [45, 90, 170], [60, 120, 220]], rtol=0, atol=0
    )
    # startup steps = ceil(startup_s / 15): small 10/15 -> 1, medium 20/15 -> 2, large 40/15 -> 3
    np.testing.assert_array_equal(params.startup_steps, [[1, 2, 3]] * 3)
    assert params.pending_depth == 3
    # delays in seconds: ml.yaml's milliseconds / 1000
    np.testing.assert_allclose(
        params.delay_s, [[0, 0.008, 0.020], [0.008, 0, 0.012], [0.020, 0.012, 0]], rtol=1e-6
    )
    np.testing.assert_array_equal(params.in_chain, [True, False, True])  # firewall, encrypt
    np.testing.assert_array_equal(params.home, [0, 1, 2])
    assert float(params.sla_s) == pytest.approx(0.060)
    assert float(params.timeout_s) == pytest.approx(1.0)
    assert params.pods_max == 30  # 3 clusters * 10 pods
    assert params.layout.num_actions == 3 * 3 * 3 * 3 * 3 + 1  # K*ops*C*F*P + no-op = 244


# --- bad input --------------------------------------------------------------------------------


def test_unknown_usecase_name_lists_available():
    with pytest.raises(UseCaseError) as err:
        load_usecase("nosuch")
    msg = str(err.value)
    assert "'nosuch'" in msg
    assert "ehr" in msg and "ml" in msg and "stream" in msg


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nchain: [firewall, encrypt\nsla_ms: 60\n")
    with pytest.raises(UseCaseError) as err:
        load_usecase(path)
    assert str(path) in str(err.value)
    assert "malformed YAML" in str(err.value)
    assert "line 2" in str(err.value) and "\n" not in str(err.value)


def test_yaml_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UseCaseError, match=r"latin1\.yaml: not UTF-8 text \(byte 9\)"):
        load_usecase(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UseCaseError, match="expected a mapping"):
        load_usecase(path)


def test_data_that_is_not_a_mapping():
    with pytest.raises(UseCaseError, match=r"^usecase=own: expected a mapping at the top level$"):
        load_usecase([1, 2], source="usecase=own")  # a use-case file Hydra read as a list


def test_missing_file_is_a_usecase_error(tmp_path):
    with pytest.raises(UseCaseError) as err:
        load_usecase(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(err.value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sla_ms": -1}, "sla_ms"),
        ({"step_seconds": 0}, "step_seconds"),
        ({"slo_ms": 60}, "slo_ms"),  # unknown key
        ({"chain": ["firewall", "compress"]}, "chain"),
        ({"chain": ["firewall", "firewall"]}, "chain"),
        ({"reward": {"alpha": 0.5, "beta": 0.5}}, "reward"),  # beta <= alpha
        ({"reward": {"alpha": 0.7, "beta": 0.3}}, "reward"),
        ({"timeout_ms": 50}, "timeout_ms"),  # timeout must exceed the SLA (60 ms)
    ],
)
def test_wrong_field_names_field_and_file(tmp_path, usecase_mapping, change, field):
    path = _write_yaml(tmp_path, usecase_mapping("ml", **change))
    with pytest.raises(UseCaseError) as err:
        load_usecase(path)
    msg = str(err.value)
    assert str(path) in msg
    assert field in msg


def test_wrong_nested_field_names_its_path(tmp_path, usecase_mapping):
    mapping = usecase_mapping("ml")
    mapping["functions"]["encrypt"]["medium"]["mu"] = 0
    mapping["proxies"][1]["home"] = 7
    path = _write_yaml(tmp_path, mapping)
    with pytest.raises(UseCaseError) as err:
        load_usecase(path)
    assert "functions.encrypt.medium.mu" in str(err.value)


def test_burst_tail_between_zero_and_one_is_refused(usecase_mapping):
    mapping = usecase_mapping("ml")
    mapping["proxies"][0]["burst_tail"] = 0.5  # an infinite-mean Pareto tail
    with pytest.raises(UseCaseError, match="burst_tail"):
        load_usecase(mapping)


def test_proxy_home_outside_clusters(usecase_mapping):
    mapping = usecase_mapping("ml")
    mapping["proxies"][2]["home"] = 3  # clusters are 0, 1, 2
    with pytest.raises(UseCaseError) as err:
        load_usecase(mapping, source="inline-ml")
    assert "inline-ml" in str(err.value)
    assert "proxies[2].home=3" in str(err.value)


def test_delay_matrix_must_be_square(usecase_mapping):
    mapping = usecase_mapping("ml")
    mapping["clusters"]["network_delay_ms"] = [[0, 1], [1, 0]]
    with pytest.raises(UseCaseError, match=r"3x3"):
        load_usecase(mapping)


def _set(mapping, dotted, value):
    """Set ``a.0.b`` in a nested mapping/list, as a Hydra override would."""
    *path, last = dotted.split(".")
    node = mapping
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return mapping


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("proxies.0.phase", NAN, "finite number"),
        ("proxies.0.phase", math.tau, "less than 6.28"),  # radians: one turn is phase 0 again
        ("proxies.0.phase", -0.1, "greater than or equal to 0"),
        ("step_seconds", INF, "finite number"),
        ("step_seconds", 1e-9, "greater than or equal to 1"),
        ("proxies.1.base_rate", INF, "finite number"),
        ("proxies.1.base_rate", 1e39, "less than or equal to 1000000000"),  # inf in float32
        ("reward.beta", NAN, "finite number"),
        ("proxies.2.burst_factor", INF, "finite number"),
        ("proxies.2.burst_factor", 101, "less than or equal to 100"),
        ("proxies.0.noise", INF, "finite number"),
        ("proxies.0.noise", 2.5, "less than or equal to 2"),
        ("measurement_noise", NAN, "finite number"),
        ("functions.encrypt.small.startup_s", INF, "finite number"),
        ("functions.firewall.large.mu", 1e10, "less than or equal to 1000000000"),
        ("clusters.network_delay_ms.0.1", NAN, "finite number"),
        ("clusters.max_pods", 10**12, "less than or equal to 150000"),
    ],
)
def test_non_finite_and_out_of_range_numbers_name_field_and_value(
    usecase_mapping, field, value, reason
):
    with pytest.raises(UseCaseError) as err:
        load_usecase(_set(usecase_mapping("ml"), field, value), source="usecase=ml")
    msg = str(err.value)
    assert msg.startswith(f"usecase=ml: {field}={value}: "), msg
    assert reason in msg
    assert "\n" not in msg


def test_many_problems_fit_one_line(usecase_mapping):
    mapping = usecase_mapping("stream")  # five proxies
    for proxy in mapping["proxies"]:
        proxy.update(phase=NAN, noise=INF)
    with pytest.raises(UseCaseError) as err:
        load_usecase(mapping)
    msg = str(err.value)
    assert msg.count("finite number") == 5  # the first five of ten problems
    assert msg.endswith("; and 5 more")


def test_a_wave_shorter_than_two_steps_is_refused(usecase_mapping):
    mapping = usecase_mapping("ml", step_seconds=15)
    mapping["proxies"][1]["diurnal_period_s"] = 29.0  # sampled every 15 s, it would alias
    with pytest.raises(UseCaseError, match=r"proxies\[1\]\.diurnal_period_s=29.0 is shorter"):
        load_usecase(mapping)
    mapping["proxies"][1]["diurnal_period_s"] = 30.0
    assert load_usecase(mapping).proxies[1].diurnal_period_s == 30.0


def test_the_largest_use_case_stays_finite_in_float32(usecase_mapping, jitted):
    """Every bound at once, bursts on every step, the tiniest pods: no NaN or inf anywhere."""
    mapping = usecase_mapping(
        "ml",
        step_seconds=86_400,
        measurement_noise=NOISE_MAX,
        reward={"alpha": REWARD_WEIGHT_MAX / 2, "beta": REWARD_WEIGHT_MAX},
    )
    for proxy in mapping["proxies"]:
        proxy.update(
            base_rate=RATE_MAX,
            diurnal_amplitude=1.0,
            diurnal_period_s=2 * 86_400,
            burst_prob=1.0,
            burst_steps=1_000_000,
            burst_factor=100.0,
            burst_tail=1.001,
            noise=NOISE_MAX,
        )
    for function in mapping["functions"].values():
        for size in function.values():
            size["mu"] = 1e-30  # a pod that serves nothing: the backlog only grows
    params = params_from_usecase(load_usecase(mapping), {"start": "random"})
    rng = np.random.default_rng(0)
    obs, state = jitted.reset(jax.random.key(0), params)
    encode, peak = jax.jit(continuous), 0.0
    for step in range(32):
        action = rng.choice(np.flatnonzero(np.asarray(obs.action_mask)))
        obs, state, reward, *_ = jitted.step_env(jax.random.key(step), state, action, params)
        rates = np.asarray(state.measurement.rates)
        assert np.isfinite(rates).all() and np.isfinite(np.asarray(encode(obs, params))).all()
        peak = max(peak, float(rates.max()))
        # every chain times out: R_perf = -1, so R = alpha * (1 - pods / pods_max) - beta
        assert -REWARD_WEIGHT_MAX <= float(reward) <= REWARD_WEIGHT_MAX / 2 - REWARD_WEIGHT_MAX
    assert peak > 10 * RATE_MAX  # the bursts and the noise did multiply the base rate


def test_mapping_with_changes_is_accepted(usecase_mapping):
    uc = load_usecase(usecase_mapping("ml", sla_ms=80, measurement_noise=0.0))
    assert uc.sla_ms == 80 and uc.measurement_noise == 0.0


# --- traces -----------------------------------------------------------------------------------


def test_trace_csv_rows_are_read(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("p0,p1,p2\n10,20,30\n# a comment\n11,21,31\n12.5,0,7\n")
    assert read_trace(path, 3) == ((10.0, 20.0, 30.0), (11.0, 21.0, 31.0), (12.5, 0.0, 7.0))


def test_trace_replay_through_the_simulator(tmp_path, usecase_mapping, make_state):
    (tmp_path / "trace.csv").write_text("p0,p1,p2\n10,20,30\n11,21,31\n12,22,32\n13,23,33\n")
    mapping = usecase_mapping("ml", quiet=True, trace="trace.csv")
    uc = load_usecase(mapping, base_dir=tmp_path)
    assert uc.trace == (
        (10.0, 20.0, 30.0),
        (11.0, 21.0, 31.0),
        (12.0, 22.0, 32.0),
        (13.0, 23.0, 33.0),
    )
    params = params_from_usecase(uc)
    assert params.has_trace
    key = np.array([0, 7], np.uint32)
    # step t of an episode that starts at trace row `offset` replays row (offset + t) % 4
    for offset, t, row in [(0, 0, 0), (0, 3, 3), (2, 1, 3), (2, 2, 0), (3, 5, 0)]:
        state = make_state(params, time=t, trace_offset=offset)
        rates, _, _ = request_rates(key, state, params)
        np.testing.assert_allclose(rates, uc.trace[row], rtol=1e-6)


def test_trace_path_is_relative_to_the_yaml_file(tmp_path, usecase_mapping):
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "rates.csv").write_text("5,6,7\n8,9,10\n")
    path = _write_yaml(folder, usecase_mapping("ml", trace="rates.csv"))
    assert load_usecase(path).trace == ((5.0, 6.0, 7.0), (8.0, 9.0, 10.0))


def test_trace_with_nan_names_file_row_and_column(tmp_path, usecase_mapping):
    path = tmp_path / "bad.csv"
    path.write_text("10,20,30\n11,nan,31\n")
    with pytest.raises(UseCaseError) as err:
        read_trace(path, 3)
    msg = str(err.value)
    assert str(path) in msg
    assert "line 2" in msg
    assert "column 2" in msg  # lines and columns count from 1, as an editor shows them
    # the same error through the use case loader
    with pytest.raises(UseCaseError, match="line 2, column 2"):
        load_usecase(usecase_mapping("ml", trace=str(path)))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10,20\n", "line 1 has 2 columns, expected 3"),
        ("10,20,-1\n", "line 1, column 3"),
        ("10,20,inf\n", "line 1, column 3"),
        ("10,abc,3\n4,5,6\n", "line 1, column 2"),
        ("p0,p1,p2\n# a comment\n1,2,3\n1,nan,3\n", "line 4, column 2"),
        ("p0,p1,p2\n", "no rows"),
    ],
)
def test_bad_trace_rows(tmp_path, text, fragment):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(UseCaseError, match=fragment):
        read_trace(path, 3)


def test_trace_that_is_not_utf8_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"10,20,30\n\xff\xfe,1,2\n")
    with pytest.raises(UseCaseError, match=r"t\.csv: not UTF-8 text \(byte 9\)"):
        read_trace(path, 3)


@pytest.mark.parametrize(
    ("trace", "fragment"),
    [
        ([], "trace must have at least one row"),
        ([1, 2, 3], "trace.0=1: Input should be a valid tuple"),  # a row, not a list of rows
        ([[1, 2]], "trace rows must have one rate per proxy (3)"),
        ([[1, 2, NAN]], "trace.0.2=nan: Input should be a finite number"),
        ({"file": "t.csv"}, "trace: Input should be a valid tuple"),
    ],
)
def test_inline_trace_refusals(usecase_mapping, trace, fragment):
    with pytest.raises(UseCaseError) as err:
        load_usecase(usecase_mapping("ml", trace=trace))
    assert fragment in str(err.value)


def test_missing_trace_file(tmp_path, usecase_mapping):
    with pytest.raises(UseCaseError, match="cannot read"):
        load_usecase(usecase_mapping("ml", trace="nowhere.csv"), base_dir=tmp_path)


# --- env settings -----------------------------------------------------------------------------


def test_validate_env_config_defaults():
    assert validate_env_config(None) == {
        "encoder": "continuous",  # the one encoder default (configs/config.yaml)
        "noop": True,
        "start": "empty",
        "episode_steps": 120,
    }
    assert validate_env_config({"start": "random", "episode_steps": 5})["episode_steps"] == 5


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        ({"episodes": 3}, "env.episodes"),
        ({"start": "full"}, "env.start"),
        ({"encoder": "pixels"}, "env.encoder"),
        ({"noop": "yes"}, "env.noop"),
        ({"episode_steps": 0}, "env.episode_steps"),
        ({"episode_steps": 2.5}, "env.episode_steps"),
        ({"episode_steps": True}, "env.episode_steps"),
    ],
)
def test_validate_env_config_refuses(cfg, fragment):
    with pytest.raises(EnvConfigError) as err:
        validate_env_config(cfg)
    assert fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_params_refuse_bad_env_config():
    with pytest.raises(EnvConfigError, match=r"env\.start"):
        params_from_usecase(load_usecase("ml"), {"start": "half"})
