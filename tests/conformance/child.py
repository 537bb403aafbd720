"""The crash child: ``python child.py PLAN``, started by ``EngineFactory.crash_and_reopen``.

It opens the store the plan's factory spec names, runs each step through the public API and
prints ``ok <n>`` after step ``n`` returned, then ``waiting`` and blocks with the store open
until the parent SIGKILLs it: nothing after the writes (no ``close()``) ever runs.
"""

from __future__ import annotations

import json
import sys

from conformance.engines import engine_from_spec


def main(plan_path: str) -> None:
    with open(plan_path) as handle:
        plan = json.load(handle)
    engine = engine_from_spec(plan["spec"])
    store = engine.open(encoder=plan["encoder"], **plan["options"])
    print("ready", flush=True)
    for number, (action, *args) in enumerate(plan["steps"]):
        if action == "add":
            rid, text, kind = args
            store.add_embedding(rid, {"body": text}, kind)
        elif action == "add_many":
            store.add_embeddings([(rid, {"body": text}, kind) for rid, text, kind in args[0]])
        elif action == "remove":
            store.remove_embedding(*args)
        elif action == "save":
            store.save_index()
        else:
            raise ValueError(f"unknown step {action!r}")
        print(f"ok {number}", flush=True)
    print("waiting", flush=True)
    sys.stdin.read()  # until killed


if __name__ == "__main__":
    main(sys.argv[1])
