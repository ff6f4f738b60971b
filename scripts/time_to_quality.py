"""Time to quality: when the greedy return first reaches hpa and hpa + 10, and when it stays.

    python scripts/time_to_quality.py --usecases ml,ehr,stream --agents dqn,haql

The program and its options: `hmk8s.bench.time_to_quality_cli`.
"""

from hmk8s.bench.time_to_quality_cli import main

if __name__ == "__main__":
    main()
