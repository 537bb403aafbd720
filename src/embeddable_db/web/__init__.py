"""The local web page (``embeddable-db serve``, extra ``[web]``): search, records, stores, map.

Nothing outside this package imports it except the CLI's ``serve`` command, lazily, so the
core never needs Starlette, Jinja2 or uvicorn."""
