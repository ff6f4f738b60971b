"""A trained run's greedy seeds beside `hpa_exact` on one load, phase by phase.

    python scripts/scenario_steps.py RUN_DIR --load peak_x2 --target 0.6 --window 0

The program and its options: `hmk8s.evaluate.phases_cli`.
"""

from hmk8s.evaluate.phases_cli import main

if __name__ == "__main__":
    main()
