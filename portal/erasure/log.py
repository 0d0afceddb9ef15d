"""The erasure log (B5): what each erasure removed and kept, and why, naming the person only
by a masked address (j***@e***.com)."""

from datetime import datetime

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal.db import db
from portal.db import utcnow

MODES = ("erase", "delete")

#: What each entry of an erasure log's "erased" list means, for staff.
ERASED = {
    "fields": _l("Personal fields"),
    "sensitive": _l("Sensitive values (destroyed)"),
    "pending_changes": _l("Pending changes waiting for confirmation"),
    "undo_records": _l("Undo records of withdrawals"),
    "ledger_evidence": _l("IP addresses and browsers recorded with consent events"),
    "outbox": _l("Addresses and bodies of messages in the outbox"),
    "mailbox": _l("Messages caught by the demo mailbox"),
    "inbound": _l("Records of messages received from the contact"),
    "requests": _l("Sign-ups and double opt-in requests waiting for confirmation"),
    "exports": _l("The contact's lines in earlier CSV exports"),
    "engagement": _l("Recorded opens and clicks of campaign mail"),
    "staff_notes": _l("Reasons staff wrote about this contact"),
    "record": _l("The whole contact record"),
}

#: What an erasure keeps, and why: shown with every log entry.
KEPT = {
    "ledger": _l(
        "The consent, subscription and opt-in history in the ledger: opaque ids and digests "
        "only, kept as proof of consent (Art. 7(1)) and for legal claims (Art. 17(3)(e))."
    ),
    "suppression": _l(
        "A keyed hash of the email address on the suppression list, so that the address is "
        "never emailed again and imports, web forms and the API cannot bring it back."
    ),
    "non_personal": _l(
        "The record's non-personal fields (region, language, kind, opt-in status) and dates, "
        "for counts and reports."
    ),
    "message_history": _l(
        "When messages were sent and the send gate's decisions, without addresses or bodies."
    ),
    "tombstone": _l("The record's opaque id (a tombstone), so that ledger events still resolve."),
    "receipt": _l(
        "The erasure receipt, delivered to the address before it was removed; its outbox row "
        "keeps the address only until it is handed to the mail server."
    ),
}


class ErasureLog(db.Model):
    """What an erasure removed and kept, naming the person only by a masked address."""

    __tablename__ = "erasure_log"
    __table_args__ = (sa.CheckConstraint(sa.column("mode").in_(MODES), name="mode"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_ref: Mapped[str] = mapped_column(sa.String(32), index=True)
    masked_identity: Mapped[str] = mapped_column(sa.String(254))
    mode: Mapped[str] = mapped_column(sa.String(10))
    actor: Mapped[str] = mapped_column(sa.String(60))
    requested_at: Mapped[datetime | None]
    # [{"item": a key of ERASED, "detail": what exactly}], and the keys of KEPT.
    erased: Mapped[list] = mapped_column(sa.JSON)
    kept: Mapped[list] = mapped_column(sa.JSON)
    event_id: Mapped[int | None] = mapped_column(sa.ForeignKey("ledger_events.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def erased_lines(self) -> list[tuple[str, str]]:
        return [
            (str(ERASED.get(entry["item"], entry["item"])), entry["detail"])
            for entry in self.erased
        ]

    def kept_lines(self) -> list[str]:
        return [str(KEPT.get(key, key)) for key in self.kept]


def mask_email(address: str) -> str:
    """Return an address as j***@e***.com: enough to recognise it, not to write to it."""
    local, _, domain = address.partition("@")
    host, dot, tld = domain.rpartition(".")
    if not dot:
        host, tld = domain, ""
    return f"{local[:1]}***@{host[:1]}***{dot}{tld}"


def latest_log(contact_ref: str) -> ErasureLog | None:
    """Return the newest erasure log entry of a contact (by public id), if any."""
    return db.session.scalar(
        sa.select(ErasureLog)
        .where(ErasureLog.contact_ref == contact_ref)
        .order_by(ErasureLog.id.desc())
        .limit(1)
    )


def log_entries(limit: int = 50) -> list[ErasureLog]:
    """Return the newest erasure log entries first."""
    return list(
        db.session.scalars(sa.select(ErasureLog).order_by(ErasureLog.id.desc()).limit(limit))
    )
