"""`flask doi ...`: double opt-in from the command line, for cron and for a first mailing.

`remind` and `prune` are meant to run daily from cron; each runs its job in the foreground and
prints what it did. A job interrupted halfway resumes where it stopped (`flask jobs run ID`).
"""

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from portal import contacts
from portal import doi
from portal import jobs
from portal.db import db
from portal.lists import MailingList

doi_cli = AppGroup("doi", help="Double opt-in: send requests, remind, prune sign-ups.")


def _run(kind: str, params: dict | None = None) -> None:
    job = jobs.start(kind, params, created_by="cli")
    db.session.commit()
    claimed = jobs.claim(job.id)
    if claimed is None:  # a worker took it first: it runs there
        click.echo(f"job {job.id} queued; `flask jobs list` shows its progress")
        return
    job = jobs.run(claimed)
    if job.status == "failed":
        raise click.ClickException(f"job {job.id} failed: {job.error}")
    outcomes = "".join(f"; {label}: {count}" for label, count in sorted(job.outcomes.items()))
    click.echo(f"job {job.id} {job.status}: {job.done} item(s){outcomes}")


@doi_cli.command("send")
@click.argument("email")
def send_command(email):
    """Send the double opt-in email to the contact with this address."""
    try:
        contact = contacts.find_by_email(email)
    except contacts.InvalidEmail as error:
        raise click.ClickException(str(error)) from None
    if contact is None:
        raise click.ClickException(f"no contact has the address {email!r}")
    result = doi.send_request(contact, source="staff", actor="cli")
    db.session.commit()
    if not result.sent:
        raise click.ClickException(result.message)
    click.echo(result.message)


@doi_cli.command("send-list")
@click.argument("slug")
def send_list_command(slug):
    """Send the double opt-in email to every member of a list, skipping opted-out contacts."""
    mailing_list = db.session.scalar(sa.select(MailingList).where(MailingList.slug == slug))
    if mailing_list is None:
        raise click.ClickException(f"no mailing list is named {slug!r}")
    _run(doi.SEND_LIST.name, {"list_id": mailing_list.id, "actor": "cli"})


@doi_cli.command("remind")
def remind_command():
    """Remind contacts who have not confirmed, up to the configured number of reminders."""
    _run(doi.REMIND.name)


@doi_cli.command("prune")
def prune_command():
    """Delete web-form sign-ups nobody confirmed within the configured number of days."""
    _run(doi.PRUNE.name)
