"""Web hardening for every page: security headers, trusted hosts, proxies, rate limits, row ids
in URLs, form fields without a name, NUL characters, and friendly error pages in the page's
language."""

import hashlib
from urllib.parse import urlsplit

from flask import Request
from flask import render_template
from flask import request
from flask.globals import request_ctx
from flask_babel import lazy_gettext as _l
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError
from limits import parse
from werkzeug.exceptions import BadRequest
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import InternalServerError
from werkzeug.exceptions import UnsupportedMediaType
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from portal import hooks
from portal.db import INTEGER_MAX
from portal.db import NulCharacter
from portal.db import db

limiter = Limiter(key_func=get_remote_address)


def quietly_allowed(limit: str, *identifiers: str) -> bool:
    """Count one attempt against a limit and say whether it is within it, without a 429.

    For answers that must read the same whether or not they were limited (SECURITY.md 12).
    Counts live in the limiter's storage, so they are shared across workers with Redis.
    """
    if not limiter.enabled:
        return True
    return limiter.limiter.hit(parse(limit), "quiet", *identifiers)


def quietly_allowed_for(
    scope: str, address: str, client_ip: str | None, *, per_ip: str, per_address: str
) -> bool:
    """Count an attempt about a (normalised) address against its per-IP and per-address
    limits, quietly; say whether it is within both.

    Both limits are counted on every attempt, so neither tells anything apart; the address is
    kept in the counts' storage only as a hash.
    """
    digest = hashlib.sha256(address.encode()).hexdigest()
    within_ip = quietly_allowed(per_ip, f"{scope}-ip", client_ip or "")
    within_address = quietly_allowed(per_address, f"{scope}-address", digest)
    return within_ip and within_address


# No inline script or style anywhere: htmx is told not to inject its indicator styles.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

ERRORS = {
    400: (_l("This request could not be understood"),
          _l("Something in the request was malformed. Go back and try again.")),
    403: (_l("You may not open this page"),
          _l("Your account does not have the role this page needs.")),
    404: (_l("Page not found"),
          _l("The address may be mistyped, or the page no longer exists.")),
    405: (_l("This action is not available here"),
          _l("Use the buttons on the page instead of typing its address.")),
    413: (_l("That was too much data"),
          _l("What you sent is larger than this portal accepts. Send less at once.")),
    415: (_l("This page takes a form"),
          _l("Send it from the page's own form, as a browser does.")),
    429: (_l("Too many attempts"),
          _l("Please wait a few minutes before you try again.")),
    500: (_l("Something went wrong on our side"),
          _l("Nothing you did caused this. Please try again in a few minutes.")),
}
CSRF_ERROR = (
    _l("Please review and resubmit"),
    _l("This form had expired or was opened in another session. Your choices were not "
       "saved: go back, reload the page, check your choices and send the form again."),
)


#: The headers every answer carries unless its view set its own (the mailbox's sandboxed mail
#: view does). Not no-referrer: Flask-WTF's referrer check on HTTPS needs the Referer
#: (SECURITY.md 8).
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
HSTS = ("Strict-Transport-Security", "max-age=31536000")


class SecurityHeaders:
    """WSGI middleware: every answer gets SECURITY_HEADERS (and HSTS over HTTPS), but for a
    header of the same name it set itself (the mailbox's sandboxed mail view sets its own
    Content-Security-Policy, a link's page its own Referrer-Policy).

    They are added to the finished list of headers the server is handed: added through
    Werkzeug's Headers after each request, each constant was checked for line breaks again and
    looked for among the others, some 80k instructions a request (bench/instructions.py): an
    eighth of a route that returns a constant, a fortieth of a contact's page.
    """

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        ours = _SECURE_HEADERS if environ.get("wsgi.url_scheme") in ("https", "wss") else (
            _PLAIN_HEADERS)

        def start(status, headers, exc_info=None):
            replacing = environ.get(_ANSWER_HEADERS)
            if replacing is not None:
                names = {name.lower() for name, _value in replacing}
                headers = [pair for pair in headers if pair[0].lower() not in names]
                headers += replacing
            present = {name.lower() for name, _value in headers}
            added = [pair for name, pair in ours if name not in present]
            return start_response(status, headers + added, exc_info)

        return self.app(environ, start)


#: Where answer_headers leaves the headers for SecurityHeaders, in the request's environ.
_ANSWER_HEADERS = "portal.answer_headers"


def answer_headers(pairs: tuple) -> None:
    """Have this request's answer carry each (name, value) header, replacing any header of
    that name, whatever its case (the view's own included).

    For the headers an answer must carry whatever its view set (a link's page: no-store,
    noindex): SecurityHeaders adds them to the list handed to the server, without Werkzeug's
    checks of each constant and its walks of the response's headers (which, done once per
    header with set or setdefault, came to a twelfth of a small request's instructions).
    """
    request.environ[_ANSWER_HEADERS] = pairs


#: (lower-case name, header) of what SecurityHeaders adds, over HTTP and over HTTPS.
_PLAIN_HEADERS = tuple((name.lower(), (name, value)) for name, value in SECURITY_HEADERS)
_SECURE_HEADERS = (*_PLAIN_HEADERS, (HSTS[0].lower(), HSTS))


#: The blueprints whose views have limits of their own (a decorator's): staff sign-in.
LIMITED_BLUEPRINTS = ("backoffice",)


def _init_limiter(app) -> None:
    """Install Flask-Limiter, its hooks running only where some limit can apply.

    Every limit of ours is a view's own, checked by its decorator, or a quiet count
    (quietly_allowed). Without a default or application-wide limit, the limiter's check
    before every request has nothing to do; its look at every answer (for the X-RateLimit
    headers of the limit just checked) and its cleanup after every request have something
    to do only on the views with limits. On every other request they cost about a fortieth of
    a contact's page and an eighth of a route returning a constant (bench/instructions.py).
    """
    added = hooks.installed(app, limiter.init_app)
    if app.config.get("RATELIMIT_DEFAULT") or app.config.get("RATELIMIT_APPLICATION"):
        return
    for registry, hook in added:
        # Its check before each request goes; the others run where the limits are.
        checks = registry is app.before_request_funcs
        hooks.only_on(registry, hook, () if checks else LIMITED_BLUEPRINTS)


def render_error(error):
    """Render a friendly error page with the error's own status."""
    if isinstance(error, CSRFError):
        title, explanation, code = *CSRF_ERROR, 400
    else:
        if not isinstance(error, HTTPException):
            error = InternalServerError()
        code = error.code or 500
        title, explanation = ERRORS.get(code, ERRORS[500 if code >= 500 else 400])
    # A request for an untrusted host has no URL adapter, so the page cannot link anywhere.
    template = "errors/error.html" if request_ctx.url_adapter is not None else "errors/bare.html"
    return render_template(template, title=title, explanation=explanation, code=code), code


def refuse_nul_character(_error: NulCharacter):
    """Answer a NUL character that reached the database as the malformed request it is."""
    db.session.rollback()
    return render_error(BadRequest())


class PortalRequest(Request):
    """Flask's request, refusing a JSON body where a form is read, and without the form fields
    whose name could not be read.

    Every form of the portal is posted by its own pages as form fields. Flask-WTF fills a form
    from a JSON body too, where a number, a list or a bare string fails inside WTForms (a 500):
    reading a request's form when it carries JSON answers 415 instead, with the page that says
    how to send it. A future JSON API reads `get_json`, never the form, and is not affected.

    A multipart part whose header is broken (a line break inside ``name="..."``) reaches
    Werkzeug's form as a field named None, and Flask-WTF's CSRF check, which reads every
    field's name, fails on it with a 500. A field without a name belongs to no form of ours:
    it is dropped, like any other unknown field.
    """

    def _load_form_data(self) -> None:
        if "form" not in self.__dict__ and self.is_json:
            raise UnsupportedMediaType()
        super()._load_form_data()
        for name in ("form", "files"):
            fields = self.__dict__.get(name)
            if fields is not None and None in fields:
                self.__dict__[name] = type(fields)(
                    (key, value) for key, value in fields.items(multi=True) if key is not None
                )


class RowId(IntegerConverter):
    """A row id in a URL (``<row_id:name>``): a number the database's integer can hold, so
    that a larger one is a 404 and never a database error."""

    def __init__(self, url_map, **kwargs):
        super().__init__(url_map, min=0, max=INTEGER_MAX)


def init_app(app) -> None:
    """Install the headers, host checks, proxy handling, limiter, error pages and row ids."""
    app.url_map.converters["row_id"] = RowId
    app.request_class = PortalRequest
    if app.config.get("TRUSTED_HOSTS") is None and not app.testing:
        host = urlsplit(app.config["PORTAL_BASE_URL"]).hostname
        app.config["TRUSTED_HOSTS"] = [host, "localhost"] if app.config["PORTAL_DEMO"] else [host]
    app.wsgi_app = SecurityHeaders(app.wsgi_app)
    hops = app.config["PORTAL_PROXY_HOPS"]
    if hops:  # outside SecurityHeaders, which reads the scheme ProxyFix sets
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    _init_limiter(app)
    for code in ERRORS:
        app.register_error_handler(code, render_error)
    app.register_error_handler(CSRFError, render_error)
    app.register_error_handler(NulCharacter, refuse_nul_character)
