"""Flask's signed-cookie sessions, with the signer built once per key set.

Flask builds a new serializer for every request, even one that carries no session cookie (a
contact's first visit from an email): a tenth of the cost of the hello-world's request, spent
on every page. The serializer holds nothing but its keys, so one per key set serves every
request; a new secret key or fallback list (a test's own app, a rotation) gets a new one.
"""

from flask.sessions import SecureCookieSessionInterface


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
