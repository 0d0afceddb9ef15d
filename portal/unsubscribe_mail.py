"""Unsubscribe by email (M7, RFC 2369): the inbound side of List-Unsubscribe's mailto.

Where ``FLASK_PORTAL_UNSUBSCRIBE_MAILTO`` is set, campaign mail offers
``mailto:<address>?subject=unsubscribe <token>`` beside the https link. The mail server that
receives that address hands each message to ``flask --app wsgi mail unsubscribe`` on standard
input, as it does for a pipe alias. The command finds the token in the subject (after a "Re:",
inside RFC 2047 encoded words, across folded lines) or, if a mail client lost it there, in the
body, and does exactly what the one-click POST does: it leaves that one list.

Its exit status is all the mail server reads. A message handled, and one with no valid token,
exit 0: a bounce would only answer someone who wrote to the address by hand, or a forger, and
a retry would get the same answer. Only a temporary failure (the database unavailable) exits
75 (EX_TEMPFAIL), so that the mail server keeps the message and tries again.
"""

import email
import logging
import re
import sys
from email import policy
from email.message import Message
from enum import StrEnum
from urllib.parse import unquote

import click
import sqlalchemy as sa
from flask.cli import with_appcontext

from portal import unsubscribe
from portal.db import db
from portal.ledger import Evidence
from portal.links import TokenInvalid
from portal.links import token_digest

#: The ledger's method for a list left by a mailto reply (the one-click POST's is "one_click").
METHOD = "mailto"

log = logging.getLogger(__name__)

#: sysexits.h: a temporary failure; Postfix, Exim and sendmail keep the message and retry.
EX_TEMPFAIL = 75
#: What is read of a message: a request to leave a list is short, and the rest is drained.
MAX_BYTES = 256 * 1024
#: How much of each text part is searched, and how many token-shaped strings are tried.
MAX_PART_CHARACTERS = 64 * 1024
MAX_CANDIDATES = 10

#: A token of the unsubscribe keys: key id, then itsdangerous's payload, a timestamp for a
#: mail body's link (refused here, but logged like any other bad token), and signature.
TOKEN = r"[A-Za-z0-9_-]{1,64}\.\.?[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]{4,8})?\.[A-Za-z0-9_-]{20,}"
_ASKED = re.compile(rf"unsubscribe\s+({TOKEN})", re.IGNORECASE)
_TOKEN = re.compile(rf"(?<![A-Za-z0-9_.-])({TOKEN})(?![A-Za-z0-9_-])")


class Outcome(StrEnum):
    """What the command did with a mail, as it prints it."""

    UNSUBSCRIBED = "unsubscribed"
    UNCHANGED = "already unsubscribed"
    INVALID = "no valid unsubscribe token"
    NO_TOKEN = "no unsubscribe token"


def _in_order(found: list[str]) -> list[str]:
    return list(dict.fromkeys(found))


def _tokens(text: str) -> list[str]:
    """Return the token-shaped strings of a text, those after "unsubscribe" first."""
    # A client that did not decode the mailto's query leaves "%20" (the token has no "%").
    text = unquote(text) if "%" in text else text
    return _in_order(_ASKED.findall(text) + _TOKEN.findall(text))


def _subject(message: Message) -> str:
    # The default policy decodes RFC 2047 encoded words (joining adjacent ones, as a long
    # subject is split) and unfolds; an unreadable subject is read as it came.
    try:
        return str(message.get("Subject", ""))
    except (LookupError, ValueError, IndexError, email.errors.MessageError):
        return str(message.get_all("Subject", [""])[0])


def _texts(message: Message) -> list[str]:
    """Return the decoded text parts of a message, plain before HTML."""
    parts = [part for part in message.walk() if part.get_content_maintype() == "text"]
    parts.sort(key=lambda part: part.get_content_subtype() != "plain")
    texts = []
    for part in parts:
        payload = part.get_payload(decode=True) or b""
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:  # a charset Python does not know
            text = payload.decode("utf-8", errors="replace")
        texts.append(text[:MAX_PART_CHARACTERS])
    return texts


def candidates(message: Message) -> list[str]:
    """Return the token-shaped strings of a message: the subject's, then the body's."""
    found = _tokens(_subject(message))
    for text in _texts(message):
        found += _tokens(text)
    return _in_order(found)[:MAX_CANDIDATES]


def _evidence(message: Message) -> Evidence:
    """Return the evidence of a mailto request: the sender's mail program, if it says."""
    client = ""
    for name in ("User-Agent", "X-Mailer"):
        try:
            client = str(message.get(name, "") or "")
        except (LookupError, ValueError, IndexError, email.errors.MessageError):
            client = ""
        if client:
            break
    client = " ".join("".join(c for c in client if c.isprintable()).split())[:200]
    return Evidence(user_agent=client or None)


def parse(raw: bytes) -> Message:
    """Return the message in a pipe delivery's bytes (an mbox "From " line is tolerated)."""
    if raw.startswith(b"From "):
        raw = raw.partition(b"\n")[2]
    return email.message_from_bytes(raw, policy=policy.default)


def handle(raw: bytes) -> Outcome:
    """Leave the list a mailed unsubscribe request names, as the one-click POST does.

    Does not commit. Raises sqlalchemy's DBAPIError when the database is unavailable.
    """
    message = parse(raw)
    tokens = candidates(message)
    if not tokens:
        log.info("unsubscribe mail without a token")
        return Outcome.NO_TOKEN
    for token in tokens:
        try:
            contact, mailing_list = unsubscribe.read_token(token)
        except TokenInvalid:
            continue
        changed = unsubscribe.unsubscribe(
            contact, mailing_list, evidence=_evidence(message), method=METHOD
        )
        return Outcome.UNSUBSCRIBED if changed else Outcome.UNCHANGED
    log.info("refused unsubscribe mail: tokens %s", ", ".join(token_digest(t) for t in tokens))
    return Outcome.INVALID


def _read_stdin() -> bytes:
    stream = sys.stdin.buffer
    raw = stream.read(MAX_BYTES)
    # Read the rest too: a mail server may count a command that leaves its input as failed.
    while stream.read(64 * 1024):
        pass
    return raw


@click.command("unsubscribe")
@with_appcontext
def unsubscribe_command():
    """Read one mail from standard input (a pipe alias) and act on its unsubscribe token."""
    raw = _read_stdin()
    try:
        outcome = handle(raw)
        db.session.commit()
    except sa.exc.DBAPIError as error:
        db.session.rollback()
        # Named by its class only: the statement's parameters would name the contact.
        log.warning("unsubscribe mail deferred, database unavailable: %s", type(error).__name__)
        click.echo("temporary failure: the database is unavailable", err=True)
        raise SystemExit(EX_TEMPFAIL) from None
    click.echo(str(outcome))
