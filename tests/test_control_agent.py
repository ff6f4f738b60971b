"""A trained run's agent outside the trainer: loaded, exported, refused when it does not fit, and
run by the controller on the simulator exactly as the evaluation runs it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives import serialization as keys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flax import serialization
from script_runs import run_script
from tiny import tiny_config

import hmk8s
from hmk8s import sim
from hmk8s.agents.config import AgentConfig, PqnConfig, deployed_bonus
from hmk8s.control import agent as agent_module
from hmk8s.control import cli
from hmk8s.control.agent import MANIFEST, PARAMS, SIGNATURE, AgentError, export_agent
from hmk8s.control.config import GuardConfig
from hmk8s.control.loop import Controller
from hmk8s.control.sim_backend import SimBackend, greedy_records
from hmk8s.domain.usecases import CONFIG_DIR
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.policies.q_policy import q_policy
from hmk8s.policies.rollout import rollout, summarise
from hmk8s.shell.exit import EXIT_BAD_INPUT
from hmk8s.train.anakin.run import run_training
from hmk8s.train.config import resolve
from hmk8s.train.runlog import params_sha256

pytestmark = pytest.mark.usefixtures("fast_compile")
EPISODES = 32


def train_tiny(run_dir, agent: AgentConfig | None = None):
    """A tiny HAQL run on ML (the tiny run's agent, or ``agent``), and the per-step records of
    the trainer's own evaluation of it: `q_policy` of the trainer's network and parameters on
    32 episodes, as `sim_eval` runs it."""
    usecase = yaml.safe_load((CONFIG_DIR / "ml.yaml").read_text())
    cfg = tiny_config(
        usecase=usecase,
        backend={"name": "sim"},
        heuristic=True,
        env={"episode_steps": 40},
        eval={"enabled": True, "episodes": EPISODES},
        **({} if agent is None else {"agent": agent}),
    )
    config = dataclasses.asdict(cfg)
    env, params = sim.make(usecase, config["env"], name="ml")
    captured = {}

    def evaluator(trainer, seed_params, key):
        q_params = jax.tree.map(lambda x: x[0], seed_params)
        bonus = deployed_bonus(cfg.haql)
        policy = q_policy(trainer.network.apply, q_params, cfg.env.encoder, bonus)
        captured["records"] = jax.device_get(rollout(env, params, policy, key, EPISODES))
        captured["key"] = key
        return {"eval": summarise(captured["records"])}

    spec = sim_env_spec(env, params, cfg.env.encoder)
    summary = run_training(resolve(cfg, "ml"), spec, run_dir, evaluator=evaluator)
    return run_dir, summary, captured


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def agent(trained):
    return hmk8s.load_agent(trained[0])


def test_the_loaded_agent_acts_as_the_trainer_evaluated_it(trained, agent):
    run_dir, summary, captured = trained
    m = agent.manifest
    assert (m.usecase, m.step, m.hidden, m.seed) == ("ml", 256, [16], 0)
    assert m.bonus == 0.5 * 1.0  # HAQL's deployed weight: xi.end * eta
    assert m.env["encoder"] == "continuous" and m.source_run == str(run_dir.resolve())
    mine = greedy_records(
        agent, captured["key"], EPISODES
    )  # the one evaluator: weights an argument
    np.testing.assert_array_equal(mine["action"], captured["records"]["action"])
    # the evaluator is compiled apart from this rollout (at another optimisation level), so
    # the env's floats round differently: equal up to that rounding
    np.testing.assert_allclose(mine["reward"], captured["records"]["reward"], rtol=1e-4)
    assert summarise(mine)["return"] == pytest.approx(summary["eval"]["return"], abs=1e-4)


def test_an_export_round_trips_and_needs_nothing_else(trained, agent, tmp_path):
    out = tmp_path / "agent"
    done = run_script("export_agent.py", tmp_path, f"run={trained[0]}", f"out={out}")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, PARAMS]
    exported = hmk8s.load_agent(out, usecase="ml")
    assert printed["params_sha256"] == exported.manifest.params_sha256
    assert exported.manifest == agent.manifest
    env = sim.ClusterEnv()
    for seed in range(4):
        obs, _ = env.reset(jax.random.PRNGKey(seed), agent.env_params)
        assert exported.explain(obs) == agent.explain(obs)


def test_a_pqn_agent_keeps_its_layer_norm_through_load_and_export(tmp_path):
    pqn = PqnConfig(rollout_steps=4, epochs=1, minibatches=2)
    run_dir, summary, captured = train_tiny(
        tmp_path / "run",
        AgentConfig(kind="pqn", hidden=[16], layer_norm=True, learning_starts=64, pqn=pqn),
    )
    loaded = hmk8s.load_agent(run_dir)
    assert loaded.manifest.layer_norm and loaded.network.layer_norm
    mine = greedy_records(loaded, captured["key"], EPISODES)
    np.testing.assert_array_equal(mine["action"], captured["records"]["action"])
    assert summarise(mine)["return"] == pytest.approx(summary["eval"]["return"], abs=1e-4)
    exported = hmk8s.load_agent(export_agent(loaded, tmp_path / "agent"))
    assert exported.manifest == loaded.manifest


def test_agents_that_do_not_fit_are_refused(trained, agent, tmp_path):
    run_dir = trained[0]
    with pytest.raises(AgentError, match="no such run or agent export"):
        hmk8s.load_agent(tmp_path / "nothing")
    with pytest.raises(AgentError, match="trained for use case 'ml', not 'stream'"):
        hmk8s.load_agent(run_dir, usecase="stream")
    with pytest.raises(AgentError, match="no checkpoint at step 7"):
        hmk8s.load_agent(run_dir, step=7)
    with pytest.raises(AgentError, match=r"seed=1, the run has seeds 0\.\.0"):
        hmk8s.load_agent(run_dir, seed=1)
    hollow = tmp_path / "hollow"
    shutil.copytree(run_dir, hollow)
    for step_dir in (hollow / "checkpoints").iterdir():
        shutil.rmtree(step_dir / "state")
    with pytest.raises(AgentError, match="has no readable state"):
        hmk8s.load_agent(hollow)
    export = export_agent(agent, tmp_path / "export")
    manifest = json.loads((export / MANIFEST).read_text())
    (export / MANIFEST).write_text(json.dumps({**manifest, "params_sha256": "0" * 64}))
    with pytest.raises(AgentError, match="differs from the manifest's"):
        hmk8s.load_agent(export)
    stream = yaml.safe_load((CONFIG_DIR / "stream.yaml").read_text())
    foreign = {**manifest, "usecase": "stream", "usecase_config": stream}
    (export / MANIFEST).write_text(json.dumps(foreign))
    with pytest.raises(AgentError, match="stream' has 406 actions"):
        hmk8s.load_agent(export)


def test_a_foreign_agent_stops_the_controller_with_one_line(trained, tmp_path):
    done = run_script(
        "control.py", tmp_path, f"agent={trained[0]}", "usecase=stream", "backend=sim"
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the agent was trained for use case 'ml', not 'stream'"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["guard.foo=1"], "error: unknown setting 'guard.foo'"),
        (["guard.max_pods_total=-1"], "error: guard.max_pods_total must be >= 0 or null, got -1"),
        (["guard.max_changes=lots"], "error: guard.max_changes: Value 'lots' of type 'str'"),
        (["backend=mesos"], "error: backend must be one of ('sim', 'k8s'), got 'mesos'"),
        (["dry_run"], "error: expected key=value arguments, got 'dry_run'"),
        ([], "error: agent= is required"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(args, message, capsys, tmp_path):
    agent = [] if not args or args == ["dry_run"] else [f"agent={tmp_path}"]
    assert cli.main(agent + args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err


def rewrite(export, change_params=None, **fields):
    """An export whose parameters (``change_params`` of the leaves' dict) and manifest fields are
    changed, with its digest recomputed: only the checks of the loader can refuse it."""
    manifest = json.loads((export / MANIFEST).read_text())
    if change_params is not None:
        params = serialization.msgpack_restore((export / PARAMS).read_bytes())
        params = change_params(params)
        (export / PARAMS).write_bytes(serialization.msgpack_serialize(params))
        manifest["params_sha256"] = params_sha256(params)
    (export / MANIFEST).write_text(json.dumps({**manifest, **fields}))


def first_kernel(change):
    """A change of the parameters' first kernel."""

    def apply(params):
        layer = next(iter(params["params"]))
        kernel = params["params"][layer]["kernel"]
        params["params"][layer]["kernel"] = change(kernel)
        return params

    return apply


def poisoned(kernel):
    kernel = kernel.copy()
    kernel[0, 0] = np.nan
    return kernel


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda e: rewrite(e, first_kernel(poisoned)), "NaN or infinite weights"),
        (lambda e: rewrite(e, first_kernel(lambda k: k * np.inf)), "NaN or infinite weights"),
        (lambda e: rewrite(e, first_kernel(lambda k: k.astype(np.int8))), "'int8'"),
        (lambda e: rewrite(e, first_kernel(lambda k: k > 0)), "'bool'"),
        (lambda e: rewrite(e, first_kernel(lambda k: k[:, :3])), "do not fit the manifest's"),
        (lambda e: rewrite(e, bonus=float("nan")), "bonus"),
        (lambda e: rewrite(e, bonus="0.5"), "bonus"),
        (lambda e: rewrite(e, hidden=[0]), "hidden.0"),
        (lambda e: rewrite(e, hidden="16"), "hidden"),
        (lambda e: rewrite(e, num_actions=True), "num_actions"),
        (lambda e: rewrite(e, env={"encoder": "nope"}), "env.encoder='nope'"),
        (lambda e: rewrite(e, usecase_config=[]), "usecase_config"),
        (lambda e: rewrite(e, extra=1), "extra"),
        (lambda e: rewrite(e, usecase_config={"trace": "/etc/passwd"}), "names a file"),
        (lambda e: (e / PARAMS).unlink() or (e / PARAMS).symlink_to("/dev/zero"), "a symlink"),
        (lambda e: (e / MANIFEST).unlink() or os.mkfifo(e / MANIFEST), "not a regular file"),
        (lambda e: (e / PARAMS).write_bytes(bytes(1 << 20)), "more than"),
    ],
)
def test_exports_are_checked_not_trusted(agent, tmp_path, capsys, tamper, message):
    """Each damaged or hostile export is refused by the loader and, through `control.py`, in one
    line with exit status 2 (no traceback, nothing hangs on a FIFO or /dev/zero)."""
    export = export_agent(agent, tmp_path / "agent")
    tamper(export)
    with pytest.raises(AgentError, match=message.replace(".", r"\.").replace("(", r"\(")):
        hmk8s.load_agent(export)
    assert cli.main([f"agent={export}", "backend=sim", "steps=1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_a_trace_travels_inside_the_export(trained, tmp_path, monkeypatch):
    """A run on a trace file exports the trace's rows, so the controller reads no file (the
    run's checkpoint is read as it is, its config given a trace file as `train.py` writes it)."""
    rows = [[5.0, 7.0, 3.0], [9.0, 2.0, 4.0]]
    trace = tmp_path / "rates.csv"
    trace.write_text("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    read = agent_module.load_params

    def with_trace(run_dir, step):
        step, config, params = read(run_dir, step)
        return step, {**config, "usecase": {**config["usecase"], "trace": str(trace)}}, params

    monkeypatch.setattr(agent_module, "load_params", with_trace)
    export = export_agent(hmk8s.load_agent(trained[0]), tmp_path / "agent")
    trace.unlink()
    exported = hmk8s.load_agent(export)
    assert exported.manifest.usecase_config["trace"] == rows
    assert [list(r) for r in exported.usecase.trace] == rows


def hmac_key(path):
    path.write_text(os.urandom(32).hex())
    return path


def ed25519_keys(folder):
    private = Ed25519PrivateKey.generate()
    pem = keys.PrivateFormat.PKCS8
    (folder / "signer.pem").write_bytes(
        private.private_bytes(keys.Encoding.PEM, pem, keys.NoEncryption())
    )
    public = private.public_key().public_bytes(
        keys.Encoding.PEM, keys.PublicFormat.SubjectPublicKeyInfo
    )
    (folder / "signer.pub").write_bytes(public)
    return folder / "signer.pem", folder / "signer.pub"


@pytest.mark.parametrize("scheme", ["hmac-sha256", "ed25519"])
def test_a_signed_export_proves_its_origin(trained, agent, tmp_path, capsys, scheme):
    if scheme == "ed25519":
        sign, verify = ed25519_keys(tmp_path)
        (tmp_path / "other").mkdir()
        _, other = ed25519_keys(tmp_path / "other")
    else:
        sign = verify = hmac_key(tmp_path / "secret")
        other = hmac_key(tmp_path / "other-secret")
    out = tmp_path / "agent"
    done = cli.export_main([f"run={trained[0]}", f"out={out}", f"sign_key={sign}"])
    assert done == 0 and json.loads((out / SIGNATURE).read_text())["scheme"] == scheme
    assert hmk8s.load_agent(out, key=verify).manifest == agent.manifest
    capsys.readouterr()
    with pytest.raises(AgentError, match="does not verify"):
        hmk8s.load_agent(out, key=other)
    # a digest can be recomputed; the signature cannot
    rewrite(out, first_kernel(lambda k: k * 2))
    assert hmk8s.load_agent(out).manifest.bonus == agent.manifest.bonus  # integrity alone holds
    assert cli.main([f"agent={out}", f"agent_key={verify}", "steps=1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.endswith("the signature does not verify with the key given") and "\n" not in err
    unsigned = export_agent(agent, tmp_path / "unsigned")
    with pytest.raises(AgentError, match="unsigned export"):
        hmk8s.load_agent(unsigned, key=verify)


def test_unguarded_on_the_simulator_it_is_the_evaluation_exactly(agent):
    key = jax.random.PRNGKey(7)
    backend = SimBackend(agent.env_params, key)
    steps = []
    controller = Controller(agent, GuardConfig(enabled=False), fallback="none")
    controller.sinks.append(_Collect(steps))
    summary = controller.run(backend)
    backend.close()
    evaluated = jax.device_get(rollout(sim.ClusterEnv(), agent.env_params, agent.policy(), key, 1))
    np.testing.assert_array_equal([d.action for d, _, _ in steps], evaluated["action"][0])
    np.testing.assert_array_equal(backend.records["action"], evaluated["action"][0])
    np.testing.assert_array_equal(backend.records["reward"], evaluated["reward"][0])
    episode = jax.tree.map(lambda x: x[None], backend.records)
    assert summarise(episode) == summarise(evaluated)  # what evaluate_policy reports
    # the one greedy evaluator, compiled apart, acts the same (its floats round differently)
    greedy = greedy_records(agent, key, 1)
    np.testing.assert_array_equal(greedy["action"], evaluated["action"])
    np.testing.assert_allclose(greedy["reward"], evaluated["reward"], rtol=1e-4)
    assert summary.steps == 40
    assert summary.total_reward == pytest.approx(float(evaluated["reward"].sum()), abs=1e-4)
    assert all(d.source == "agent" for d, _, _ in steps)


def test_guarded_on_the_simulator_it_keeps_the_change_budget(agent):
    backend = SimBackend(agent.env_params, jax.random.PRNGKey(7))
    steps = []
    guard = GuardConfig(max_changes=2, window_steps=4)
    controller = Controller(agent, guard, fallback="heuristic", sinks=[_Collect(steps)])
    summary = controller.run(backend)
    backend.close()
    changed = [o.changed for _, o, _ in steps]
    windows = [sum(changed[i : i + 4]) for i in range(len(changed) - 3)]
    assert max(windows) <= 2 < sum(changed)
    assert summary.changes == sum(changed)
    assert summary.refusals["rate_limit"] == sum(
        1 for d, _, _ in steps if d.verdict.reason == "rate_limit"
    )
    for d, o, _ in steps:
        if d.verdict.reason == "rate_limit":
            assert d.action == d.noop and not o.changed


class _Collect:
    def __init__(self, into: list) -> None:
        self.into = into

    def record(self, decision, outcome, after) -> None:
        self.into.append((decision, outcome, after))
