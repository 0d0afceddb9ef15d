"""The suppression list: keyed digests of addresses that must never be emailed or re-added (B5)."""

from datetime import datetime

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal.contacts import OPT_OUTS
from portal.contacts import Contact
from portal.contacts import canonical_email
from portal.crypto import keyed_digest
from portal.db import db
from portal.db import utcnow
from portal.keys import keyset

#: Why an address is on the list (the column is free text: a bounce or a complaint may add
#: theirs). Erasure keeps the erased address there (B5). An address that leaves a record
#: which said no to our email goes there too: once it is no longer the record's, the record's
#: opt-out no longer covers it, and it could come back as a new contact (SECURITY 11).
ERASURE = "erasure"
LEFT_A_NO = "address left an opted-out record"

#: What staff read when an address they type is on the list, by the reason recorded: they may
#: know why (this is the back office), and an address erased is not one that said no.
REFUSALS = {
    ERASURE: _l("This address was erased and is on the suppression list; it cannot be used."),
    LEFT_A_NO: _l(
        "This address belonged to a contact who opted out or whose processing is stopped, and "
        "is on the suppression list; it cannot be used."
    ),
}


class Suppression(db.Model):
    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # HMAC of the normalised address under key_id: a bare hash of an address is guessable.
    digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    key_id: Mapped[str] = mapped_column(sa.String(40))
    reason: Mapped[str] = mapped_column(sa.String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def digests(address: str) -> list[str]:
    """Return the address's digest under every configured key, so rotation loses nothing."""
    normalised = canonical_email(address).encode()
    keys = keyset("suppression")
    return [keyed_digest("suppression", key_id, normalised) for key_id in keys.keys]


def digest(address: str) -> str:
    """Return the address's digest under the active key: what a new row records."""
    keys = keyset("suppression")
    return keyed_digest("suppression", keys.active_id, canonical_email(address).encode())


#: An SQL expression saying whether an address is on the suppression list, for queries built
#: once (constructing a statement costs more than running it, and every mail asks): run them
#: with {"suppression_digests": digests(address)}.
LISTED = sa.exists().where(
    Suppression.digest.in_(sa.bindparam("suppression_digests", expanding=True))
)
_IS_LISTED = sa.select(LISTED)


def is_suppressed(address: str) -> bool:
    """Say whether an address is on the suppression list."""
    return bool(db.session.scalar(_IS_LISTED, {"suppression_digests": digests(address)}))


def refusal(address: str) -> str | None:
    """Return why staff cannot use an address on the list, or None when it is not on it."""
    reason = db.session.scalar(
        sa.select(Suppression.reason).where(Suppression.digest.in_(digests(address))).limit(1)
    )
    if reason is None:
        return None
    if reason in REFUSALS:
        return str(REFUSALS[reason])
    # A reason some other source recorded (a bounce, a complaint), in its own words.
    return str(
        _l(
            "This address is on the suppression list (%(reason)s); it cannot be used.",
            reason=reason,
        )
    )


def suppressed_among(addresses: list[str]) -> set[str]:
    """Return those of the addresses that are on the suppression list, in one query."""
    by_digest = {digest: address for address in addresses for digest in digests(address)}
    if not by_digest:
        return set()
    statement = sa.select(Suppression.digest).where(Suppression.digest.in_(list(by_digest)))
    return {by_digest[digest] for digest in db.session.scalars(statement)}


def suppress(address: str, reason: str) -> Suppression:
    """Add an address to the suppression list (once) and return its entry."""
    existing = db.session.scalar(
        sa.select(Suppression).where(Suppression.digest.in_(digests(address)))
    )
    if existing is not None:
        return existing
    keys = keyset("suppression")
    entry = Suppression(
        digest=keyed_digest("suppression", keys.active_id, canonical_email(address).encode()),
        key_id=keys.active_id,
        reason=reason,
    )
    db.session.add(entry)
    db.session.flush()
    return entry


def keep_out_leaving_address(contact: Contact, address: str) -> Suppression | None:
    """Suppress an address leaving a contact that opted out or stopped processing; return
    the entry, or None when the contact had not said no.

    The contact's new address needs nothing: the record keeps its opt-out (M5), and its
    stopped processing, and both go on covering whatever address it holds.
    """
    if contact.opt_in_status in OPT_OUTS or contact.processing_stopped_at is not None:
        return suppress(address, LEFT_A_NO)
    return None
