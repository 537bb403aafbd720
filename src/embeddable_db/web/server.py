"""``embeddable-db serve``: open the stores, warm the model in the background, run uvicorn."""

from __future__ import annotations

import sys
import threading
import webbrowser
from collections.abc import Sequence
from pathlib import Path


def serve(data_dir: Path | None, files: Sequence[str] = (), *, host: str = "127.0.0.1",
          port: int = 8001, open_browser: bool = False, allow_backfill: bool = False,
          model_backend: str = "onnx", url: str | None = None,
          read_url: str | None = None) -> int:
    import uvicorn

    from .app import build_app
    from .stores import Stores

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this address can read every "
              "record (the default is 127.0.0.1)", file=sys.stderr)
    try:
        stores = Stores(data_dir, files, model_backend=model_backend, url=url,
                        read_url=read_url)
    except ValueError as exc:  # a file that is not SQLite, a table that cannot be opened
        print(f"embeddable-db serve: error: {exc}", file=sys.stderr)
        return 2
    threading.Thread(target=stores.warm, name="warm-model", daemon=True).start()
    app = build_app(stores, allow_backfill=allow_backfill)
    database = [] if stores.url is None else [stores.url]
    where = ", ".join([*([str(data_dir)] if data_dir is not None else []), *database, *files])
    url = f"http://{host}:{port}/"
    print(f"serving {len(stores.views)} stores of {where} at {url}", flush=True)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        stores.close()
    return 0
