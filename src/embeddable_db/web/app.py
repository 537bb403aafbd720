"""The Starlette application: the search page and its JSON twin, record pages, the stores page
(counts, a bar chart and the vector map), and an optional backfill button.

Every stored text reaches the page through Jinja2 with autoescaping; snippets are escaped
first and only then wrapped in ``<mark>`` for the matched words."""

from __future__ import annotations

import html
import re
import secrets
import threading
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..cli.hits import hit_json
from .stores import MAX_TOP_K, BadRequest, Stores
from .views import NotFound

ENV = Environment(loader=PackageLoader("embeddable_db.web", "templates"),
                  autoescape=select_autoescape(["html"]))


def highlight(text: str, query: str, width: int = 240) -> Markup:
    """``text`` cut to ``width``, escaped, with the query's words in ``<mark>``."""
    words = {w for w in re.findall(r"\w+", query.lower()) if len(w) > 1}
    cut = text[:width] + ("…" if len(text) > width else "")
    safe = html.escape(cut, quote=True)
    if words:
        pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(words)) + r")\b",
                             re.IGNORECASE)
        safe = pattern.sub(lambda m: f"<mark>{m.group(1)}</mark>", safe)
    return Markup(safe)


ENV.filters["highlight"] = highlight


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {raw!r}") from None


def _query(request: Request) -> dict[str, Any]:
    params = request.query_params
    return {"query": params.get("q", ""), "mode": params.get("mode", "hybrid"),
            "top_k": _int(request, "top_k", 10), "kind": params.get("kind") or None,
            "where": params.getlist("where")}


def build_app(stores: Stores, *, allow_backfill: bool = False) -> Starlette:
    """The application over ``stores`` (already open, read-only)."""
    token = secrets.token_urlsafe(32)
    running = threading.Lock()

    def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
        return HTMLResponse(ENV.get_template(name).render(kinds=stores.kinds(), max_top_k=MAX_TOP_K,
                                                          allow_backfill=allow_backfill,
                                                          **values), status_code=status)

    def bad(reason: str) -> HTMLResponse:
        return page("error.html", 400, reason=reason)

    async def search(request: Request) -> Response:
        try:
            form = _query(request)
            hits = stores.search(**form) if form["query"] else []
        except BadRequest as exc:
            return bad(str(exc))
        return page("search.html", form=form, hits=hits)

    async def api_search(request: Request) -> Response:
        try:
            form = _query(request)
            hits = stores.search(**form)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"query": form["query"], "mode": form["mode"],
                             "hits": [hit_json(n, h, form["mode"]) | {"text": t}
                                      for n, h, t in hits]})

    async def record(request: Request) -> Response:
        p = request.path_params
        try:
            fields, state, near = stores.record(p["store"], p["kind"], p["rid"])
        except NotFound as exc:
            return page("error.html", 404, reason=str(exc))
        return page("record.html", store=p["store"], kind=p["kind"], rid=p["rid"],
                    fields=fields, state=state, near=near)

    async def stores_page(request: Request) -> Response:
        rows = stores.summary()
        top = max([1] + [r[c] for r in rows for c in ("records", "vectors", "missing", "stale",
                                                       "orphaned")])
        return page("stores.html", rows=rows, top=top, token=token)

    async def api_map(request: Request) -> Response:
        return JSONResponse({"points": stores.map_points()})

    async def backfill(request: Request) -> Response:
        if not allow_backfill:
            return bad("this server was started without --allow-backfill: nothing here writes")
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        if not secrets.compare_digest((form.get("token") or [""])[0], token):
            return bad("the form's token is missing or wrong: reload the stores page and retry")
        if not running.acquire(blocking=False):
            return page("error.html", 409, reason="a backfill is already running: wait for it to "
                        "finish, then reload the stores page")
        try:
            done = stores.backfill()
        finally:
            running.release()
        return page("error.html", 200, reason=f"backfill done: {done}")

    async def not_found(request: Request, exc: Exception) -> Response:
        return page("error.html", 404, reason=f"no page at {request.url.path}")

    async def failed(request: Request, exc: Exception) -> Response:
        return page("error.html", 500, reason=f"the server failed: {type(exc).__name__}")

    routes = [
        Route("/", search), Route("/api/search", api_search),
        Route("/record/{store}/{kind}/{rid:path}", record),
        Route("/stores", stores_page), Route("/api/map", api_map),
        Route("/backfill", backfill, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 500: failed})
