"""`scripts/sim_to_real.py`'s agents: each `--agent NAME=RUN` is a player of its own, and a name
that is taken (twice, or a baseline's) is refused before a node is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmk8s.control.agent import AgentError
from hmk8s.control.sim_to_real import main, named_agents


def test_each_agent_is_named_once_and_a_bare_run_is_the_agent():
    assert named_agents(["haql=runs/a", "dqn=runs/b=c"]) == {
        "haql": Path("runs/a"),
        "dqn": Path("runs/b=c"),  # the first `=` names it
    }
    assert named_agents(["runs/x"]) == {"agent": Path("runs/x")}


@pytest.mark.parametrize("specs", [["a=x", "a=y"], ["x", "y"], ["rulebook=x"], ["hpa=x"], ["=x"]])
def test_a_taken_or_empty_name_is_refused(specs):
    with pytest.raises(AgentError, match="a name of its own"):
        named_agents(specs)


def test_the_command_refuses_a_taken_name_in_one_line(tmp_path, capsys):
    code = main([str(tmp_path), "--agent", "hpa=x", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hpa=x" in err
    assert not (tmp_path / "out").exists()


def test_the_node_or_earlier_episodes_one_of_them_is_needed(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["--out", out]) == 2
    assert main([str(tmp_path), "--predict-from", str(tmp_path / "e.json"), "--out", out]) == 2
    assert capsys.readouterr().err.count("--predict-from an earlier run's episodes") == 2
    (tmp_path / "e.json").write_text("[{}]")
    assert main(["--predict-from", str(tmp_path / "e.json"), "--out", out]) == 2
    assert "not a sim_to_real episodes.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
