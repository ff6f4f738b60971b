"""`scripts/fidelity.py`: record episodes on the local node, then compare and calibrate.

    python scripts/fidelity.py measure DIR --usecase ml --episodes 2 --out fidelity/ml
    python scripts/fidelity.py calibrate fidelity/ml

`measure` needs a node from `scripts/local_cluster.py up DIR --usecase <the same>`; it writes
`episode-<seed>.json` per episode. `calibrate` fits the simulator on every episode (their steps
pooled) and writes `usecase/<usecase>-calibrated.yaml`; `report.json` holds what was fitted and
the fidelity before and after calibration, cross-validated: each episode predicted by a
calibration fitted on the others, and the episodes pooled. The calibrated use case trains as
`python scripts/train.py --config-dir <recordings> usecase=<usecase>-calibrated`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from hmk8s.domain.usecases import UseCaseError, load_usecase
from hmk8s.k8s.local import fidelity
from hmk8s.shell.exit import refuse


def measure(args: argparse.Namespace) -> int:
    usecase = load_usecase(args.usecase)
    args.out.mkdir(parents=True, exist_ok=True)
    recordings = fidelity.replay_episodes(
        args.node,
        usecase,
        steps=args.steps,
        step_seconds=args.step_seconds,
        episodes=args.episodes,
        load_scale=args.load_scale,
    )
    for seed in range(args.episodes):
        target = args.out / f"episode-{seed}.json"
        if target.exists():
            return refuse(f"{target} exists; record into a new --out")
        rec = next(recordings)
        target.write_text(json.dumps(rec.to_json()))
        report = json.dumps(fidelity.fidelity([(usecase, rec)]))
        print(f"episode {seed} (load scale {rec.load_scale:.4f}): {report}")
    return 0


def calibrate(args: argparse.Namespace) -> int:
    episodes = sorted(args.recordings.glob("episode-*.json"))
    if len(episodes) < 2:
        return refuse(f"{args.recordings}: needs two recorded episodes (fit, check)")
    episodes.sort(key=lambda p: int(p.stem.split("-")[1]))  # episode-10 after episode-9
    recs = [fidelity.Recording.from_json(json.loads(p.read_text())) for p in episodes]
    usecase = load_usecase(recs[0].usecase)
    calibrated, fitted = fidelity.calibrate(usecase, recs)
    # each episode checked against a calibration that never saw it
    folds = {
        p.name: fidelity.calibrate(usecase, recs[:i] + recs[i + 1 :])[0]
        for i, p in enumerate(episodes)
    }
    held_out = {
        p.name: {
            "before": fidelity.fidelity([(usecase, rec)]),
            "after": fidelity.fidelity([(folds[p.name], rec)]),
        }
        for p, rec in zip(episodes, recs, strict=True)
    }
    report = {
        "fitted_on": [p.name for p in episodes],
        "fitted": fitted,
        "load_scale": recs[0].load_scale,
        "step_seconds": recs[0].step_seconds,
        "cross_validated": {
            "before": fidelity.fidelity([(usecase, rec) for rec in recs]),
            "after": fidelity.fidelity(
                [(folds[p.name], rec) for p, rec in zip(episodes, recs, strict=True)]
            ),
        },
        "held_out": held_out,
    }
    out = args.recordings / "usecase" / f"{usecase.name}-calibrated.yaml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(yaml.safe_dump(fidelity.usecase_yaml(calibrated), sort_keys=False))
    (args.recordings / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(
        f"calibrated use case: {out}; train on it with: python scripts/train.py "
        f"--config-dir {args.recordings} usecase={out.stem}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    m = sub.add_parser("measure", help="record episodes on the local node")
    m.add_argument("node", type=Path, help="the node's directory (scripts/local_cluster.py up)")
    m.add_argument("--usecase", default="ml")
    m.add_argument("--episodes", type=int, default=2)
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--step-seconds", type=float, default=6.0)
    m.add_argument(
        "--load-scale",
        type=float,
        default=None,
        help="default: the largest at which every episode's busiest step fits 1.2 cores",
    )
    m.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("calibrate", help="fit on every episode; check each on the others' fit")
    c.add_argument("recordings", type=Path)
    args = parser.parse_args(argv)
    try:
        return measure(args) if args.action == "measure" else calibrate(args)
    except (UseCaseError, OSError, ValueError) as err:
        return refuse(err)


def entry() -> None:
    raise SystemExit(main())
