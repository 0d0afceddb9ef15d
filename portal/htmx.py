"""Progressive enhancement with htmx: one place decides "fragment or whole page"."""

from flask import make_response
from flask import render_template
from flask import request


def wants_fragment() -> bool:
    """Say whether this request is htmx asking for a fragment (not boosted, not a restore)."""
    headers = request.headers
    return (
        headers.get("HX-Request") == "true"
        and headers.get("HX-Boosted") != "true"
        and headers.get("HX-History-Restore-Request") != "true"
    )


def triggered_by(*ids: str) -> bool:
    """Say whether this is htmx asking for a fragment for the element with one of these ids."""
    return wants_fragment() and request.headers.get("HX-Trigger") in ids


def render(page: str, fragment: str, /, **context):
    """Render the fragment for htmx and the whole page otherwise; caches must tell them apart."""
    response = make_response(render_template(fragment if wants_fragment() else page, **context))
    response.vary.add("HX-Request")
    return response
