#!/usr/bin/env python3
"""Backfill embeddings for the six databases: the same as ``embeddable-db backfill``.

    python scripts/backfill_embeddings.py --db bot workflow --backend annoy --batch-size 200

Importing ``embeddable_db.cli`` loads nothing heavy, and ``main`` takes Ctrl-C over before
the library loads, so an early Ctrl-C exits 130 quietly like a later one.
"""

import sys
from pathlib import Path

try:
    from embeddable_db.cli import main
except ImportError:  # run from a checkout without installing: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from embeddable_db.cli import main

if __name__ == "__main__":
    sys.exit(main(["backfill", *sys.argv[1:]], prog="backfill_embeddings.py"))
