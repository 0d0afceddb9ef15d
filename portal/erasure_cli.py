"""Command-line erasure and restriction: `flask contacts erase`, `stop-processing` and
`lift-restriction`, thin wrappers over `portal.erasure` and `portal.restriction`."""

import click

from portal import contacts
from portal import erasure
from portal import restriction
from portal import suppression
from portal.db import db

ACTOR = "cli"


def _contact_or_fail(email: str) -> contacts.Contact:
    try:
        contact = contacts.find_by_email(email)
    except contacts.InvalidEmail as error:
        raise click.ClickException(str(error)) from None
    if contact is None:
        if suppression.is_suppressed(email):
            raise click.ClickException(
                "this address was already erased (it is on the suppression list); "
                "nothing was changed"
            )
        raise click.ClickException(f"no contact has the address {email!r}")
    return contact


@click.command("erase")
@click.argument("email")
@click.option(
    "--delete",
    "delete_record",
    is_flag=True,
    help="Delete the whole record (a tombstone remains) instead of erasing it.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase_command(email, delete_record, yes):
    """Erase a contact's personal data (or delete the record), mailing a receipt first."""
    contact = _contact_or_fail(email)
    what = "delete the record of" if delete_record else "erase the personal data of"
    if not yes:
        click.confirm(f"This cannot be undone. Really {what} {email}?", abort=True)
    try:
        if delete_record:
            log = erasure.delete(contact, actor=ACTOR, method="cli")
        else:
            log = erasure.erase(contact, actor=ACTOR, method="cli")
    except erasure.ErasureError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(
        f"{'deleted' if delete_record else 'erased'} {log.masked_identity}; "
        f"erasure log entry {log.id}; a receipt is queued in the outbox"
    )


@click.command("stop-processing")
@click.argument("email")
@click.option("--reason", required=True, help="Why, e.g. 'the contact asked by phone'.")
def stop_command(email, reason):
    """Stop the processing of a contact's data on their behalf: the record is locked."""
    contact = _contact_or_fail(email)
    try:
        restriction.stop(contact, reason=reason, actor=ACTOR)
    except restriction.RestrictionError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"processing stopped for contact {contact.public_id}; the record is locked")


@click.command("lift-restriction")
@click.argument("email")
@click.option("--reason", required=True, help="Why the restriction is lifted.")
def lift_command(email, reason):
    """Lift a stopped processing, mailing the contact first."""
    contact = _contact_or_fail(email)
    try:
        restriction.lift(contact, reason=reason, actor=ACTOR)
    except restriction.RestrictionError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"restriction lifted for contact {contact.public_id}; the contact was mailed")


def register(group: click.Group) -> None:
    """Add these commands to the `contacts` command group."""
    for command in (erase_command, stop_command, lift_command):
        group.add_command(command)
