"""The results page: markdown tables of an evaluation's results and the figures that show them.

`render_markdown` is a pure function of the results (as written to results.json), so the page in
`docs/results.md` and each run's `results.md` come from the same code; `write_figures` draws the
PNGs from the plot data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hmk8s.agents.config import AGENTS
from hmk8s.domain.metrics import POLICY_METRICS
from hmk8s.evaluate import learning, plots
from hmk8s.evaluate.calibrate import CALIBRATED
from hmk8s.evaluate.experiment import TARGET_BASELINES
from hmk8s.evaluate.stats import Interval

BASELINE_ORDER = (
    "hpa_exact_calibrated",
    "hpa_exact",
    "hpa_calibrated",
    "hpa",
    "heuristic",
    "static_calibrated",
    "static",
    "random",
)
COLUMNS = POLICY_METRICS


def _cell(v: dict[str, float], fmt: str) -> str:
    if v["low"] == v["high"] == v["value"]:
        return fmt.format(v["value"])
    return f"{fmt.format(v['value'])} [{fmt.format(v['low'])}, {fmt.format(v['high'])}]"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def label(name: str) -> str:
    """A policy's name in a table: agents in capitals, a calibrated baseline as its baseline."""
    if name in AGENTS:
        return name.upper()
    if name.endswith(CALIBRATED):
        return f"`{name.removesuffix(CALIBRATED)}` calibrated"
    return f"`{name}`"


def policy_table(result: dict[str, Any]) -> list[str]:
    """Every policy's scores, each calibrated baseline beside its default."""
    names = [n for n in (*AGENTS, *BASELINE_ORDER) if n in result["policies"]]
    lines = [
        "| policy | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "| --- |" + " ---: |" * len(COLUMNS),
    ]
    for name in names:
        row = result["policies"][name]
        cells = " | ".join(_cell(row[k], f) for k, _, f in COLUMNS)
        lines.append(f"| {label(name)} | {cells} |")
    return lines


def _knobs(knobs: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in knobs.items())


def calibration_table(result: dict[str, Any]) -> list[str]:
    """Each calibrated baseline: its knobs and validation return, and its test scores beside
    the default's."""
    calibration = result.get("calibration", {})
    if not calibration:
        return []
    lines = [
        "Calibrated baselines: each knob setting of the grid scored on the validation (curve) "
        "episodes, the one with the highest mean return kept; test scores default → calibrated.",
        "",
        "| baseline | calibrated knobs | settings tried | validation return | test return | "
        "test SLA violations | test mean pods |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    pol = result["policies"]
    for name, cal in calibration.items():
        tried = len(cal["grid"]["validation_return"])
        pair = [pol[name], pol[name + CALIBRATED]]
        cells = [
            " → ".join(f"{p[metric]['value']:{fmt}}" for p in pair)
            for metric, fmt in (
                ("return", ".1f"),
                ("sla_violation_rate", ".3f"),
                ("mean_pods", ".2f"),
            )
        ]
        lines.append(
            f"| `{name}` | {_knobs(cal['knobs'])} | {tried} | {cal['validation_return']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def scenario_tables(result: dict[str, Any]) -> list[str]:
    """On each shifted load: HAQL against the calibrated `hpa_exact` (return, SLA violations
    and pods side by side, and the verdict), then every policy's scores there."""
    scenarios = result.get("scenarios", {})
    if not scenarios:
        return []
    target = TARGET_BASELINES[0]
    lines = [
        f"Shifted loads (agents trained on the default load). HAQL vs {label(target)}: "
        "return, SLA violations and mean pods (HAQL IQM [95 % CI] / baseline); "
        "beats: higher return, significant, with no more SLA violations.",
        "",
        "| scenario | return | SLA violations | mean pods | return difference [95 % CI] | beats |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in scenarios.items():
        haql, base = r["policies"]["haql"], r["policies"][target]
        diff = r["comparisons"][f"haql_vs_{target}"]["return"]["difference"]
        cells = [
            f"{_cell(haql[m], f)} / {f.format(base[m]['value'])}"
            for m, f in (
                ("return", "{:.1f}"),
                ("sla_violation_rate", "{:.3f}"),
                ("mean_pods", "{:.2f}"),
            )
        ]
        verdict = _yes(r["targets"][f"haql_beats_{target}"])
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_cell(diff, '{:+.1f}')} | {verdict} |"
        )
    for name, r in scenarios.items():
        lines += ["", f"Scenario `{name}`:", "", *policy_table(r)]
    return lines


def speed_table(result: dict[str, Any]) -> list[str]:
    speed = result["learning_speed"]
    budgets = list(speed["agents"]["dqn"]["return_at"])
    lines = [
        "| agent | steps to threshold | seeds never reaching it | normalised AUC | "
        + " | ".join(f"return at {int(b):,}" for b in budgets)
        + " |",
        "| --- | ---: | ---: | ---: |" + " ---: |" * len(budgets),
    ]
    for name in AGENTS:
        a = speed["agents"][name]
        cells = [
            _cell(a["time_to_threshold"], "{:,.0f}"),
            str(a["censored_seeds"]),
            _cell(a["auc"], "{:.2f}"),
            *(_cell(a["return_at"][b], "{:.1f}") for b in budgets),
        ]
        lines.append(f"| {name.upper()} | " + " | ".join(cells) + " |")
    return lines


def comparison_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        "| comparison | metric | IQM difference [95 % CI] | P(X better than Y) [95 % CI] | "
        "significant |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    rows = [(k, m, v) for k, per in result["comparisons"].items() for m, v in per.items()]
    rows += [("haql_vs_dqn", m, v) for m, v in result["learning_speed"]["comparisons"].items()]
    for key, metric, v in rows:
        a, b = key.split("_vs_")
        poi = v["probability_of_improvement"]
        if metric in ("sla_violation_rate", "time_to_threshold"):
            poi = {"value": 1 - poi["value"], "low": 1 - poi["high"], "high": 1 - poi["low"]}
        lines.append(
            f"| {a.upper()} vs {b if b not in AGENTS else b.upper()} | {metric} | "
            f"{_cell(v['difference'], '{:+.3f}')} | {_cell(poi, '{:.2f}')} | "
            f"{'yes' if v['significant'] else 'no'} |"
        )
    return lines


def verdicts(result: dict[str, Any]) -> list[str]:
    """Plain statements of which targets hold."""
    speed, t, pol = result["learning_speed"], result["targets"], result["policies"]
    lines = []
    if speed["dqn_final_iqm"] <= speed["random_return"]:
        lines.append(
            f"- DQN's final IQM return {speed['dqn_final_iqm']:.1f} is no better than `random`'s "
            f"{speed['random_return']:.1f}: DQN has not learnt within the budget, so the steps to "
            "90 % of its final return measure nothing; learning-speed target **not measurable**."
        )
    else:
        lines.append(
            f"- HAQL reaches {speed['threshold']:.1f} (90 % of the way from `random`'s "
            f"{speed['random_return']:.1f} to DQN's final IQM return {speed['dqn_final_iqm']:.1f}) "
            f"in {speed['time_ratio']:.2f} x DQN's env steps: "
            f"target (at most 0.5) {'holds' if t['haql_half_time'] else '**missed**'}."
        )
    haql = pol["haql"]
    for b in TARGET_BASELINES:
        if f"haql_beats_{b}" not in t:
            continue
        base = pol[b]
        ret_h, ret_b = haql["return"]["value"], base["return"]["value"]
        significant = result["comparisons"][f"haql_vs_{b}"]["return"]["significant"]
        lines.append(
            f"- HAQL vs {label(b)}: return {ret_h:.1f} vs {ret_b:.1f} "
            f"({'' if significant else 'not '}significant), "
            f"SLA violations {haql['sla_violation_rate']['value']:.3f} vs "
            f"{base['sla_violation_rate']['value']:.3f}, mean pods "
            f"{haql['mean_pods']['value']:.2f} vs {base['mean_pods']['value']:.2f}: target "
            f"{'holds' if t[f'haql_beats_{b}'] else '**missed**'}."
        )
    return lines


def training_sentence(result: dict[str, Any]) -> str:
    """Each agent's training seconds, and whether they ran at once: then each is the span of
    its own thread, and the use case took the longer of the two, not their sum."""
    seconds = result["train_seconds"]
    when = " (both agents at once, in two threads)" if result["trained_together"] else ""
    return f"Training time{when}: DQN {seconds['dqn']:.0f} s, HAQL {seconds['haql']:.0f} s."


def changes_sentence(changes: dict[str, Any], budget_factor: float = 1.0) -> str:
    """The agent settings this use case trains with that differ from the agent block, and its
    budget when it is not `total_steps`."""
    listed = [f"`agent.{key}={value}`" for key, value in changes.items()]
    if budget_factor != 1.0:
        listed.append(f"{budget_factor:g} times the budget (`evaluate.budget_by_usecase`)")
    return f" This use case trains with {', '.join(listed)}." if listed else ""


def deployed_line(deployed: dict[str, Any]) -> str:
    """How the trained HAQL agent weighs the rulebook in the tables, and where that came from."""
    line = f"Trained HAQL acts by argmax [Q + {deployed['value']:g} eta H]"
    scores = deployed["validation_returns"]
    if not scores:
        return line + "."
    sla = deployed.get("validation_sla", {})
    tried = ", ".join(
        f"{xi}: {value:.1f}" + (f" / {sla[xi]:.3f}" if xi in sla else "")
        for xi, value in scores.items()
    )
    limit = deployed.get("sla_limit")
    if limit is None:
        return line + f", the weight with the best IQM return on the curve episodes ({tried})."
    baselines = " and ".join(f"`{b}`'s" for b in TARGET_BASELINES)
    return line + (
        ", the weight with the best IQM return on the curve episodes among those whose SLA "
        f"violation rate there is at most {limit:.3f}, the lower of {baselines}, "
        f"or among all when none is (return / SLA violations: {tried})."
    )


def render_markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The whole page for one run: a section per use case, figures referenced by file name."""
    out = [
        f"# Evaluation: DQN vs HAQL vs the baselines ({', '.join(results)})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}  ",
        f"Wall time: {meta['wall_seconds'] / 60:.1f} min",
        "",
        "Agents: IQM over seeds with the 95 % stratified-bootstrap CI in brackets; baselines: "
        "their value on the same held-out episodes. Significant: the 95 % CI of the IQM "
        "difference excludes 0. P(X better than Y): for SLA violations and steps to threshold, "
        "lower is better.",
    ]
    for usecase, r in results.items():
        prefix = meta.get("figure_prefix", "")
        out += [
            "",
            f"## {usecase.upper()}",
            "",
            f"{r['seeds']} seeds x {r['total_steps']:,} env steps and "
            f"{r['updates']['dqn']:,} updates each ({r['updates_per_step']:g} per env step); "
            f"{r['eval_episodes']} held-out episodes; learning curves on {r['eval_episodes']} "
            f"other episodes. {training_sentence(r)}"
            f"{changes_sentence(r['agent_changes'], r['budget_factor'])}",
            "",
            deployed_line(r["deployed_xi"]),
            "",
            *verdicts(r),
            "",
            *policy_table(r),
            "",
            *calibration_table(r),
            "",
            *scenario_tables(r),
            "",
            f"Learning speed (threshold {r['learning_speed']['threshold']:.1f}):",
            "",
            *speed_table(r),
            "",
            *comparison_lines(r),
            "",
            f"![learning curves]({prefix}{usecase}_curves.png)",
            f"![policies]({prefix}{usecase}_policies.png)",
            f"![timeline]({prefix}{usecase}_timeline.png)",
        ]
    return "\n".join(out) + "\n"


def write_figures(
    out_dir: Path, usecase: str, result: dict[str, Any], data: dict[str, Any]
) -> list[Path]:
    """The three figures of one use case, as `<usecase>_{curves,policies,timeline}.png`."""
    bands = {name: learning.curve_band(c) for name, c in data["curves"].items()}
    lines = {b: data["baseline_curve"][b] for b in BASELINE_ORDER if b in data["baseline_curve"]}
    names = [*AGENTS, *(b for b in BASELINE_ORDER if b in result["policies"])]
    bars = {
        n: {k: Interval(**result["policies"][n][k]) for k, _ in plots.BAR_METRICS} for n in names
    }
    title = f"{usecase.upper()}: "
    return [
        plots.learning_curves(
            out_dir / f"{usecase}_curves.png",
            data["steps"],
            bands,
            lines,
            title + "greedy return on the curve episodes",
            result["seeds"],
        ),
        plots.policy_bars(out_dir / f"{usecase}_policies.png", bars, title + "held-out episodes"),
        plots.episode_timeline(
            out_dir / f"{usecase}_timeline.png",
            data["timeline"],
            title + "one held-out episode (HAQL: the median seed)",
        ),
    ]
