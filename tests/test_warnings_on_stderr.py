"""What goes wrong is said on stderr: under `scripts/train.py` (and `scripts/evaluate.py`,
whose root config includes train's) Hydra configures logging from
`hmk8s/configs/hydra/job_logging/stderr.yaml`, and the warnings of every hmk8s module, even
one imported before Hydra ran, reach stderr as one line each."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AS_HYDRA_DOES = textwrap.dedent(
    """
    import logging
    from hmk8s.k8s import readings  # its logger exists before Hydra configures logging
    from hmk8s.shell.compose import run_command
    from hmk8s.train.cli import register_schema

    def task(cfg):  # run as scripts/train.py runs its task: after Hydra configured logging
        log = logging.getLogger("hmk8s.k8s.readings")
        log.info("an info line stays quiet")
        log.warning("proxies without latency [0];\\n  assuming the timeout")  # an API error's text
        logging.getLogger("hmk8s.train.actor_learner.k8s_run").error(
            "env 1: 3 objects left; remove them with python scripts/cleanup.py --run-id run-1"
        )
        logging.getLogger("some.library").warning("another library's warning stays quiet")

    register_schema()
    run_command("config", task, [])
    """
)


def test_hmk8s_warnings_reach_stderr_one_line_each(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", AS_HYDRA_DOES],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: proxies without latency [0]; assuming the timeout",
        "error: env 1: 3 objects left; remove them with python scripts/cleanup.py --run-id run-1",
    ]
    assert list(tmp_path.iterdir()) == []  # no log file
