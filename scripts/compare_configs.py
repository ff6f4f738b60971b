"""The README command under several configs, back to back, with wall-clock ratios.

    python scripts/compare_configs.py --out /tmp/cmp \\

The program and its options: `hmk8s.bench.compare_configs_cli`.
"""

from hmk8s.bench.compare_configs_cli import main

if __name__ == "__main__":
    main()
