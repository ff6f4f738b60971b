"""Sim to real: a trained agent, the rulebook and Kubernetes' own HPA controller in charge of the
same scaled load on the local node, each beside the simulator's prediction of the same episode.

    python scripts/sim_to_real.py NODE_DIR --agent haql=runs/<run> --agent dqn=runs/<run> \
        --usecase ml --episodes 5 --calibrated fidelity/ml/ml-calibrated.yaml --out sim-to-real/ml

Per policy and episode (seed i: the use case's rates for seed i, all episodes scaled alike by
`--load-scale` or `hmk8s.k8s.local.fidelity.episodes_load_scale`, from the `minimal` start
placement):
- each `--agent NAME=RUN` (`agent` when only a run is given): the agent acts every step on the
  node's readings (the greedy policy it deploys with);
- `rulebook`: the operator's rulebook (`hmk8s.policies.baselines.heuristic_policy`);
- `hpa`: `autoscaling/v2beta2` HorizontalPodAutoscalers (CPU target `--hpa-target`, the
  simulator's `hpa` default) on every function Deployment, acted on by kube-controller-manager;
  the backend holds the placement and adopts the HPA's replica counts before each step.
The simulator's prediction runs the same policy (for `hpa` the simulator's `hpa_exact` baseline)
from the recorded start on the recorded rates, with the calibrated use case when given.
Writes `episodes.json` (every recording and prediction) and `results.json` (means per policy).
`--predict-from <run>/episodes.json` predicts an earlier run's recordings again (a changed
simulator, another calibration) without a node.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hmk8s.control.agent import AgentError, load_agent
from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES, UseCase, UseCaseError, load_usecase
from hmk8s.k8s import objects
from hmk8s.k8s.local import fidelity
from hmk8s.policies.baselines import heuristic_policy, hpa_exact_policy
from hmk8s.shell.exit import refuse

HPA_TARGET = 0.8
#: the players that are not agents
BASELINE_PLAYERS = ("rulebook", "hpa")


class PolicyPlayer(fidelity.Player):
    """A `hmk8s.policies` Policy acting on the node's structured observation every step; the
    simulator predicts it with the same policy."""

    def __init__(self, name: str, policy: Any) -> None:
        self.name, self.policy, self.prediction = name, policy, policy
        self._act = jax.jit(policy.act)
        self._pstate = None
        self._t = 0

    def on_reset(self, env: Any, api_client: Any) -> None:
        self._pstate = self.policy.init(env.params)
        self._t = 0

    def choose(self, env: Any) -> int:
        self._t += 1
        action, self._pstate = self._act(
            jax.random.PRNGKey(self._t), self._pstate, env.structured_observation, env.params
        )
        return int(action)


class HpaPlayer(fidelity.Player):
    """Kubernetes' HPA controller in charge: an HPA on every function Deployment of the run.
    The simulator predicts it with its `hpa_exact` baseline (every Deployment to its desired
    count each sync, with the real controller's tolerance, stabilisation and rate policies)."""

    name = "hpa"

    def __init__(self, target: float) -> None:
        self.target = target
        self.prediction = hpa_exact_policy(target)

    def on_reset(self, env: Any, api_client: Any) -> None:
        from kubernetes import client

        apps = client.AppsV1Api(api_client)
        # the 1.20 node serves autoscaling/v2beta2, which newer clients have no typed API for
        scaling = client.CustomObjectsApi(api_client)
        max_pods = int(env.params.max_pods)
        for cluster in env.cmap.clusters:
            ns = cluster.namespace
            found = apps.list_namespaced_deployment(
                ns, label_selector=objects.run_selector(env.run_id)
            )
            for d in found.items:
                labels = d.metadata.labels
                f = FUNCTION_NAMES.index(labels[objects.FUNCTION])
                c = CONFIG_NAMES.index(labels[objects.CONFIG])
                body = objects.autoscaler(env.run_id, f, c, self.target, max_pods, d.metadata.uid)
                scaling.create_namespaced_custom_object(
                    "autoscaling", "v2beta2", ns, "horizontalpodautoscalers", body
                )

    def before_step(self, env: Any) -> None:
        env.adopt_replicas()


def named_agents(specs: list[str]) -> dict[str, Path]:
    """`NAME=RUN` (or a bare `RUN`, named `agent`) per `--agent`; names must differ from each
    other and from the baselines'."""
    agents: dict[str, Path] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else ("agent", "", spec)
        if not name or name in agents or name in BASELINE_PLAYERS:
            raise AgentError(f"--agent {spec}: give each agent a name of its own, NAME=RUN")
        agents[name] = Path(path)
    return agents


def recorded_episodes(path: Path) -> dict[tuple[str, int], fidelity.Recording]:
    """An earlier run's recordings by (policy, seed), from its `episodes.json`."""
    try:
        found = json.loads(path.read_text())
        return {
            (e["policy"], e["seed"]): fidelity.Recording.from_json(e["recording"]) for e in found
        }
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AgentError(f"{path}: not a sim_to_real episodes.json ({err})") from None


def run(args: argparse.Namespace) -> dict:
    usecase = load_usecase(args.usecase)
    predicted_on: UseCase = load_usecase(args.calibrated) if args.calibrated else usecase
    agents = {
        name: load_agent(path, usecase=usecase)
        for name, path in named_agents(args.agent or []).items()
    }
    every: list[fidelity.Player] = [
        *(PolicyPlayer(name, agent.policy()) for name, agent in agents.items()),
        PolicyPlayer("rulebook", heuristic_policy()),
        HpaPlayer(args.hpa_target),
    ]
    players = [p for p in every if args.policies is None or p.name in args.policies]
    earlier = recorded_episodes(args.predict_from) if args.predict_from else None
    count = args.episodes
    if earlier is not None:
        missing = [p.name for p in players if (p.name, 0) not in earlier]
        if missing:
            raise AgentError(f"{args.predict_from}: no episodes of {', '.join(missing)}")
        count = max(seed for _, seed in earlier) + 1
    args.out.mkdir(parents=True)
    episodes, results = [], {}
    for player in players:
        node, sim = [], []
        if earlier is not None:
            recordings = (earlier[(player.name, seed)] for seed in range(count))
        else:
            recordings = fidelity.replay_episodes(
                args.node,
                usecase,
                steps=args.steps,
                step_seconds=args.step_seconds,
                episodes=count,
                load_scale=args.load_scale,
                player=player,
            )
        for seed, rec in enumerate(recordings):
            measured = fidelity.node_summary(rec)
            predicted = fidelity.simulate(predicted_on, rec, player.prediction)
            node.append(measured)
            sim.append(predicted)
            episodes.append(
                {
                    "policy": player.name,
                    "seed": seed,
                    "node": measured,
                    "sim": predicted,
                    "recording": rec.to_json(),
                }
            )
            (args.out / "episodes.json").write_text(
                json.dumps(episodes)
            )  # kept if a later one fails
            print(f"{player.name} episode {seed}: node {measured} | sim {predicted}", flush=True)
        results[player.name] = {
            "node": {k: float(np.mean([e[k] for e in node])) for k in node[0]},
            "sim": {k: float(np.mean([e[k] for e in sim])) for k in sim[0]},
            "node_return_per_episode": [e["return"] for e in node],
            "sim_return_per_episode": [e["return"] for e in sim],
        }
    summary = {
        "usecase": usecase.name,
        "agents": args.agent or [],
        "predicted_with": str(args.calibrated or f"usecase={usecase.name}"),
        "episodes": count,
        "steps": len(episodes[0]["recording"]["rates"]),
        "step_seconds": episodes[0]["recording"]["step_seconds"],
        "load_scale": episodes[0]["recording"]["load_scale"],
        "results": results,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    return summary


def table(summary: dict) -> str:
    """The results as a Markdown table: node beside simulator, per policy."""
    rows = [
        "| policy | return (node) | return (sim) | SLA violated (node) | (sim) "
        "| pods (node) | (sim) | changes (node) | (sim) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in summary["results"].items():
        n, s = r["node"], r["sim"]
        rows.append(
            f"| {name} | {n['return']:.2f} | {s['return']:.2f} | {n['sla_violation_rate']:.3f} | "
            f"{s['sla_violation_rate']:.3f} | {n['pods_mean']:.2f} | {s['pods_mean']:.2f} | "
            f"{n['changes']:.1f} | {s['changes']:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "node",
        type=Path,
        nargs="?",
        help="the node's directory (scripts/local_cluster.py up); not with --predict-from",
    )
    parser.add_argument("--usecase", default="ml")
    parser.add_argument(
        "--agent",
        action="append",
        help="NAME=RUN: a training run or an export to put in charge (repeatable)",
    )
    parser.add_argument("--calibrated", type=Path, default=None, help="calibrated use case YAML")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--hpa-target", type=float, default=HPA_TARGET)
    parser.add_argument(
        "--load-scale",
        type=float,
        default=None,
        help="the recordings' scale (report.json) that a calibrated agent trained on; default: "
        "the largest at which every episode's busiest step fits 1.2 cores",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=None,
        help="a subset of the agents' names, rulebook and hpa (default all)",
    )
    parser.add_argument(
        "--predict-from",
        type=Path,
        default=None,
        help="an earlier run's episodes.json: predict its recordings again, the node untouched",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if (args.node is None) == (args.predict_from is None):
        return refuse("give the node's directory, or --predict-from an earlier run's episodes")
    if args.out.exists():
        return refuse(f"{args.out} exists; write into a new --out")
    try:
        summary = run(args)
    except (AgentError, UseCaseError) as err:
        return refuse(err)
    print(table(summary))
    return 0


def entry() -> None:
    raise SystemExit(main())
