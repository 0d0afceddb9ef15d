"""CSV export of a filtered contact list, as a background job (S4).

Each exported contact's line is stored in the database in the same transaction as the job's
cursor, so a worker killed halfway resumes without a missing or doubled line; the file is put
together when staff download it. Sensitive values leave only masked (E4), cells that a
spreadsheet would run as a formula are escaped (SECURITY.md 13), and a contact whose
processing is stopped is left out and counted (P7, B6).
"""

import csv
import io

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import contact_filters
from portal import jobs
from portal.consent import ConsentDefinition
from portal.consent import ConsentState
from portal.contacts import Contact
from portal.contacts import FieldDefinition
from portal.contacts import field_value
from portal.db import db
from portal.lists import MailingList
from portal.lists import Subscription

#: The contact columns every export starts with, in order.
CONTACT_COLUMNS = (
    "public_id",
    "kind",
    "email",
    "first_name",
    "last_name",
    "phone",
    "region",
    "language",
    "opt_in_status",
    "erasure_requested_at",
)
#: A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
EXPORTED = "exported"
LEFT_OUT = "left out: processing stopped"


class ExportError(ValueError):
    """An export cannot be started as asked; the message says why."""


class ExportLine(db.Model):
    """One contact's line of an export, written with the job's progress."""

    __tablename__ = "export_lines"

    job_id: Mapped[int] = mapped_column(
        sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    # Deleting the contact deletes its lines in earlier exports too.
    contact_id: Mapped[int] = mapped_column(
        sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    line: Mapped[str] = mapped_column(sa.Text)


def escape_cell(value) -> str:
    """Return a value as CSV cell text that a spreadsheet shows and never evaluates."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _columns() -> list[str]:
    custom = db.session.scalars(
        sa.select(FieldDefinition.name).where(~FieldDefinition.builtin).order_by(FieldDefinition.id)
    )
    consents = db.session.scalars(sa.select(ConsentDefinition.slug).order_by(ConsentDefinition.id))
    return [*CONTACT_COLUMNS, *custom, *(f"consent:{slug}" for slug in consents), "lists"]


def start(filters: contact_filters.Filters, *, created_by: str) -> jobs.Job:
    """Queue an export of the contacts matching the filters, with the columns of today."""
    job = jobs.start(
        EXPORT.name, {"query": filters.query_string(), "columns": _columns()}, created_by=created_by
    )
    # A kind's work sees only the params: they name the job its lines belong to.
    job.params = {**job.params, "job_id": job.id}
    db.session.flush()
    return job


def _filters(params: dict) -> contact_filters.Filters:
    filters, errors = contact_filters.parse_query_string(params["query"])
    if errors:
        # A list or consent named by the filter is gone: export nothing rather than too much.
        raise ExportError("the filter no longer applies: " + ", ".join(sorted(errors)))
    return filters


def _count(params: dict) -> int:
    return contact_filters.count(_filters(params))


def _items_after(params: dict, after: int, limit: int):
    return [
        (contact.id, contact)
        for contact in contact_filters.contacts_after(_filters(params), after, limit)
    ]


def _cell(contact: Contact, column: str, consents: dict, subscribed: list[str]) -> str | None:
    if column == "erasure_requested_at":
        moment = contact.erasure_requested_at
        return moment.isoformat(timespec="seconds") if moment else None
    if column in CONTACT_COLUMNS:
        return getattr(contact, column)
    if column.startswith("consent:"):
        return consents.get(column.removeprefix("consent:"), "never asked")
    if column == "lists":
        return " ".join(subscribed)
    return field_value(contact, column)  # masked when sensitive


def line(contact: Contact, columns: list[str]) -> str:
    """Return a contact's CSV line for these columns, masked and escaped."""
    consents = dict(
        db.session.execute(
            sa.select(ConsentDefinition.slug, ConsentState.state)
            .join(ConsentState, ConsentState.consent_id == ConsentDefinition.id)
            .where(ConsentState.contact_id == contact.id)
        ).all()
    )
    subscribed = list(
        db.session.scalars(
            sa.select(MailingList.slug)
            .join(Subscription, Subscription.list_id == MailingList.id)
            .where(Subscription.contact_id == contact.id, Subscription.status == "subscribed")
            .order_by(MailingList.slug)
        )
    )
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(
        [escape_cell(_cell(contact, column, consents, subscribed)) for column in columns]
    )
    return buffer.getvalue()


def _process(params: dict, contact: Contact) -> str:
    job_id = params["job_id"]
    if contact.processing_stopped_at is not None:
        return LEFT_OUT
    db.session.add(
        ExportLine(job_id=job_id, contact_id=contact.id, line=line(contact, params["columns"]))
    )
    return EXPORTED


def csv_text(job: jobs.Job) -> str:
    """Return a finished export as CSV text: the header, then one line per exported contact."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(job.params["columns"])
    lines = db.session.scalars(
        sa.select(ExportLine.line)
        .where(ExportLine.job_id == job.id)
        .order_by(ExportLine.contact_id)
    )
    return buffer.getvalue() + "".join(lines)


def left_out(job: jobs.Job) -> int:
    """Return how many contacts an export left out because their processing is stopped."""
    return job.outcomes.get(LEFT_OUT, 0)


def forget_contact(contact: Contact) -> int:
    """Delete a contact's lines from every stored export (erasure); return how many."""
    result = db.session.execute(sa.delete(ExportLine).where(ExportLine.contact_id == contact.id))
    return result.rowcount


EXPORT = jobs.register(
    jobs.JobKind(
        name="export-contacts",
        label="Export contacts as CSV",
        count=_count,
        items_after=_items_after,
        process=_process,
    )
)
