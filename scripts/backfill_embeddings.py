#!/usr/bin/env python3
"""Backfill embeddings for the six databases: the same as ``embeddable-db backfill``.

    python scripts/backfill_embeddings.py --db bot workflow --backend annoy --batch-size 200
"""

import signal
import sys
from pathlib import Path


def _stop(signum, frame):  # Ctrl-C while the library still loads: exit quietly, like later on
    try:
        sys.stderr.write("interrupted\n")
    except (OSError, ValueError):
        pass
    raise SystemExit(130)


if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job stays immune
    signal.signal(signal.SIGINT, _stop)

try:
    from embeddable_db.cli import main
except ImportError:  # run from a checkout without installing: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from embeddable_db.cli import main

if __name__ == "__main__":
    sys.exit(main(["backfill", *sys.argv[1:]], prog="backfill_embeddings.py"))
