"""Flask's signed-cookie sessions, with the signer built once per key set.

Flask builds a new serializer for every request, even one that carries no session cookie (a
contact's first visit from an email): a tenth of the cost of the hello-world's request, spent
on every page. The serializer holds nothing but its keys, so one per key set serves every
request; a new secret key or fallback list (a test's own app, a rotation) gets a new one.

A contact's pages need no session: their forms carry a token bound to the contact. The only
thing they read from one is a message flashed before a redirect, which a request that came
without the session cookie cannot have (`flashed_messages`); a session nothing used is then
not saved at all.
"""

from flask import current_app
from flask import get_flashed_messages
from flask import request
from flask.sessions import SecureCookieSessionInterface


def flashed_messages() -> list:
    """Return get_flashed_messages(), without opening the session if the request has none.

    Opening it, even to find it empty, makes the answer vary on the Cookie header and be
    saved. A flash lives in the session cookie until the page after the redirect shows it; a
    contact's view that flashes always redirects, so no flash of this request is missed.
    """
    if current_app.config["SESSION_COOKIE_NAME"] not in request.cookies:
        return []
    return get_flashed_messages()


class CookieSessions(SecureCookieSessionInterface):
    """Flask's SecureCookieSessionInterface, its serializer kept between requests."""

    def __init__(self) -> None:
        self._keys: tuple | None = None
        self._serializer = None

    def get_signing_serializer(self, app):
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        if keys != self._keys:
            self._serializer = super().get_signing_serializer(app)
            self._keys = keys
        return self._serializer

    def save_session(self, app, session, response) -> None:
        # An empty session nobody opened has nothing to save and nothing to vary on: Flask's
        # own returns too, but reads its seven cookie settings first.
        if session or session.accessed or session.modified:
            super().save_session(app, session, response)
