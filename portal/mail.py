"""Email: the Flask-Mail extension, header checks, the HTML part's document, and turning an
outbox row into a message.

Flask-Mail checks the subject, sender and recipients for CR/LF but not the extra headers, so
every header value is checked here before a message is queued (SECURITY.md 7).
"""

import html
import re
import secrets
import smtplib
import uuid
from email import policy
from email.generator import BytesGenerator
from io import BytesIO
from urllib.parse import urlsplit

from flask import current_app
from flask_mail import Connection
from flask_mail import Mail
from flask_mail import Message

from portal.contacts import InvalidEmail
from portal.contacts import normalise_email

mail = Mail()

MAX_HEADER_LENGTH = 998  # RFC 5322 line limit
HEADER_NAME_CHARACTERS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


class MessageRejected(ValueError):
    """A message cannot be queued as it is; the message says why."""


def check_header(name: str, value: str) -> str:
    """Return a header value if it is safe to send, or raise MessageRejected."""
    if not name or not set(name) <= HEADER_NAME_CHARACTERS:
        raise MessageRejected(f"header name {name!r} is not allowed")
    if not isinstance(value, str):
        raise MessageRejected(f"header {name} must be text")
    if any(character in value for character in "\r\n\x00"):
        raise MessageRejected(f"header {name} contains a line break")
    if len(value) > MAX_HEADER_LENGTH:
        raise MessageRejected(f"header {name} is longer than {MAX_HEADER_LENGTH} characters")
    return value


#: Headers the outbox writes itself: an extra header must not add a second one (or a Bcc).
RESERVED_HEADERS = {
    "bcc", "cc", "content-transfer-encoding", "content-type", "date", "from", "in-reply-to",
    "message-id", "mime-version", "references", "return-path", "subject", "to",
}


def check_extra_header(name: str, value: str) -> str:
    """Return an extra header's value if it is safe to send, or raise MessageRejected."""
    check_header(name, value)
    if name.lower() in RESERVED_HEADERS:
        raise MessageRejected(f"header {name} is set by the outbox, not as an extra header")
    return value


def check_address(value: str, what: str = "address") -> str:
    """Return a normalised address, or raise MessageRejected."""
    try:
        # normalise_email accepts only what SMTP as Flask-Mail speaks it can carry (an ASCII
        # local part, an IDNA domain): anything else would stop the worker at hand-off.
        return normalise_email(check_header("To", value))
    except (InvalidEmail, MessageRejected):
        raise MessageRejected(f"the {what} {value!r} is not an address we can mail") from None


def html_document(body: str, *, language: str, title: str) -> str:
    """Return an HTML part's body as a whole document in the mail's language, titled with its
    subject, as mail clients and screen readers expect (WCAG 3.1.1, 2.4.2).

    The frame is that of templates/mail/_layout.html, for the mails written as templates:
    this one is for those assembled in code (a campaign's staff-written fragment and footer).
    """
    return (
        f'<!doctype html>\n<html lang="{html.escape(language)}">\n'
        f'<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
        f"<body>\n{body}\n</body>\n</html>"
    )


#: How an HTML part framed by html_document or the mail layout starts, with its language.
_DOCUMENT_LANGUAGE = re.compile(
    r'<!doctype html>\s*<html lang="([A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8})*)"', re.IGNORECASE
)


def html_language(html_body: str | None) -> str | None:
    """Return the language an HTML part of ours says it is in (its <html lang>), or None."""
    found = _DOCUMENT_LANGUAGE.match(html_body or "")
    return found.group(1).replace("_", "-") if found else None


def new_message_id() -> str:
    """Return a Message-ID in the portal's own domain, made once per outbox row."""
    domain = urlsplit(current_app.config["PORTAL_BASE_URL"]).hostname or "localhost"
    return f"<{uuid.uuid4().hex}@{domain}>"


#: How a message is written to SMTP: the header values exactly as checked when queued, CRLF.
#: Flask-Mail sets the default policy (policy.SMTP), which parses every header again through
#: the header registry while writing (about 1.5 CPU ms a message), and encodes a long
#: List-Unsubscribe as RFC 2047 words, which a structured header may not carry.
class _SmtpPolicy(policy.Compat32):
    def fold_binary(self, name, value):
        # An ASCII value is written as it is (RFC 5322 allows 998 characters a line), so what
        # was checked when queued is what arrives, and no email.header.Header is built for
        # each header of each mail. compat32 would move a long value (a List-Unsubscribe, an
        # encoded subject) to a continuation line, which readers take as a leading space. The
        # only line breaks are Flask-Mail's own folds of an encoded subject or name.
        if isinstance(value, str) and value.isascii() and "\r" not in value:
            lines = value.split("\n")
            if (
                all(line[:1] in (" ", "\t") for line in lines[1:])
                and len(name) + 2 + len(lines[0]) <= MAX_HEADER_LENGTH
                and all(len(line) <= MAX_HEADER_LENGTH for line in lines)
            ):
                return f"{name}: {self.linesep.join(lines)}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


SMTP_POLICY = _SmtpPolicy(linesep="\r\n")


class _Generator(BytesGenerator):
    """The standard generator, but for how it makes sure a MIME boundary is not in the parts.

    The standard one compiles a regular expression for each random boundary, to look for it
    as a line of the parts (a message with a text and an HTML part has two boundaries, about
    0.1 CPU ms a message). A boundary that occurs nowhere in the parts is found by a plain
    search, and is all the more safe.
    """

    @classmethod
    def _make_boundary(cls, text=None):
        while True:
            boundary = f"==============={secrets.token_hex(10)}=="
            if text is None or f"--{boundary}".encode("ascii") not in text:
                return boundary


class OutgoingMessage(Message):
    """A Flask-Mail message written out with SMTP_POLICY."""

    def _message(self):
        message = super()._message()
        message.policy = SMTP_POLICY
        return message

    def as_bytes(self) -> bytes:
        # What email.message.Message.as_bytes does, with the generator above.
        buffer = BytesIO()
        _Generator(buffer, mangle_from_=False, policy=SMTP_POLICY).flatten(self._message())
        return buffer.getvalue()


def build_message(row) -> Message:
    """Turn an outbox row into a Flask-Mail message that keeps the row's Message-ID."""
    message = OutgoingMessage(
        subject=row.subject,
        sender=row.sender,
        recipients=[row.recipient],
        body=row.text_body,
        html=row.html_body,
        extra_headers=dict(row.headers or {}),
    )
    # A retry must carry the same Message-ID, so that a receiver can drop a duplicate.
    message.msgId = row.message_id
    if row.in_reply_to:
        message.extra_headers["In-Reply-To"] = row.in_reply_to
        message.extra_headers["References"] = row.in_reply_to
    # The mail's language, for readers of the text part too (the demo mailbox marks it up with
    # it): the one its HTML part was written in, when that is one of our documents.
    language = html_language(row.html_body)
    if language and not any(name.lower() == "content-language" for name in message.extra_headers):
        message.extra_headers["Content-Language"] = language
    return message


class TimedConnection(Connection):
    """An SMTP connection with a timeout, so that a stalled server cannot hang a worker."""

    def configure_host(self) -> smtplib.SMTP:
        state = self.mail
        timeout = current_app.config["PORTAL_SMTP_TIMEOUT"]
        smtp_class = smtplib.SMTP_SSL if state.use_ssl else smtplib.SMTP
        host = smtp_class(state.server, state.port, timeout=timeout)
        if state.use_tls:
            host.starttls()
        if state.username and state.password:
            host.login(state.username, state.password)
        return host


def connect() -> TimedConnection:
    """Open one SMTP connection for a batch of messages."""
    return TimedConnection(current_app.extensions["mail"])


def init_app(app) -> None:
    """Bind Flask-Mail."""
    mail.init_app(app)
