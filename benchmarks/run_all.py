"""Run every benchmark in its own process, print their output and a summary of ratios.

``make bench`` runs issue 6's benchmarks (100k vectors) and issue 14's PostgreSQL figures
beside SQLite's (``bench_postgres.py``: a real server it starts and stops itself);
``make bench-scale`` (``--scale``) runs issue 12's and issue 15's at one million records.
The first run embeds the real texts once (minutes); later runs reuse ``benchmarks/.cache/``.
Exit status is non-zero when a benchmark fails (not when a target is missed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    "bench_backfill.py",
    "bench_incremental.py",
    "bench_search.py",
    "bench_cold_open.py",
    "bench_memory.py",
    "bench_encoder.py",
    "eval/score.py",
    "bench_hybrid.py",
    "bench_web.py",
    "bench_postgres.py",
)
#: ``make bench-scale`` (``--scale``): issue 12's figures at 100k and 1M records.
SCALE_SCRIPTS = (
    "bench_crossover.py",
    "bench_scale_backfill.py",
    "bench_scale_search.py",
    "bench_scale_crash.py",
    "bench_scale_tables.py",
)


def main() -> int:
    scripts = SCALE_SCRIPTS if "--scale" in sys.argv[1:] else SCRIPTS
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    started = time.perf_counter()
    summary, failed = [], []
    for script in scripts:
        if not (HERE / script).exists():
            print(f"== {script}: not present, skipped\n", flush=True)
            continue
        print(f"== {script}", flush=True)
        began = time.perf_counter()
        with subprocess.Popen([sys.executable, str(HERE / script)], stdout=subprocess.PIPE,
                              text=True, env=env) as child:
            for line in child.stdout:
                print(line, end="", flush=True)
                if line.startswith("RATIO"):
                    summary.append(f"{script}: {line.strip()}")
        if child.returncode:
            failed.append(script)
        status = "ok" if child.returncode == 0 else f"FAILED (exit {child.returncode})"
        print(f"== {script}: {status} in {time.perf_counter() - began:.0f} s\n", flush=True)
    print("== summary")
    print("\n".join(summary))
    failures = f"; failed: {', '.join(failed)}" if failed else ""
    print(f"total {time.perf_counter() - started:.0f} s{failures}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
