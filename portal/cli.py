"""Command-line commands: thin wrappers over the domain functions.

Each command owns its transaction, and turns a domain error into one line and a non-zero exit.
"""

import json
import sys

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import IntegrityError

from portal import contacts
from portal import demo
from portal import doi_cli
from portal import erasure_cli
from portal import gate
from portal import keys
from portal import ledger
from portal import links
from portal import staff
from portal import unsubscribe_mail
from portal import workers
from portal.db import db

contacts_cli = AppGroup("contacts", help="Add contacts and print their links.")
ledger_cli = AppGroup("ledger", help="Verify and checkpoint the consent ledger.")
keys_cli = AppGroup("keys", help="Generate keys for the configuration.")


def _contact_or_fail(email: str) -> contacts.Contact:
    try:
        contact = contacts.find_by_email(email)
    except contacts.InvalidEmail as error:
        raise click.ClickException(str(error)) from None
    if contact is None:
        raise click.ClickException(f"no contact has the address {email!r}")
    return contact


@contacts_cli.command("add")
@click.argument("email")
@click.option("--kind", type=click.Choice(contacts.KINDS), default="lead", show_default=True)
@click.option("--first-name")
@click.option("--last-name")
@click.option("--phone")
@click.option("--region")
@click.option("--language")
@click.option(
    "--single-opt-in",
    "single_opt_in",
    is_flag=True,
    help="Mark as Single opt-in (user): the contact agreed to marketing email.",
)
@click.option("--reason", help="Why the contact is marked Single opt-in (user).")
def add_contact_command(
    email, kind, first_name, last_name, phone, region, language, single_opt_in, reason
):
    """Add a contact and print its public id."""
    if single_opt_in and not reason:
        raise click.ClickException("--single-opt-in needs a --reason")
    if language and language not in current_app.config["PORTAL_LANGUAGES"]:
        raise click.ClickException(
            f"--language must be one of {', '.join(current_app.config['PORTAL_LANGUAGES'])}"
        )
    try:
        contact = contacts.add_contact(
            email,
            kind=kind,
            first_name=first_name,
            last_name=last_name,
            phone=phone,
            region=region,
            language=language,
            method="cli",
            actor="cli",
            reason=reason,
            opt_in=contacts.OptIn.SINGLE_USER if single_opt_in else contacts.OptIn.NONE,
        )
    except contacts.ContactError as error:
        raise click.ClickException(str(error)) from None
    try:
        db.session.commit()
    except IntegrityError:
        # Another process added the same address between our check and our commit.
        db.session.rollback()
        raise click.ClickException("a contact with this email address already exists") from None
    click.echo(f"added contact {contact.public_id}")


@contacts_cli.command("link")
@click.argument("email")
def link_command(email):
    """Print the contact's preference-page URL."""
    click.echo(links.manage_url(_contact_or_fail(email)))


@ledger_cli.command("verify")
@click.option(
    "--from-checkpoint",
    is_flag=True,
    help="Start at the newest checkpoint instead of the first event.",
)
@click.option(
    "--expect",
    metavar="EVENT_ID:HASH",
    help="A checkpoint kept outside the database, as printed by 'ledger checkpoint'.",
)
def verify_command(from_checkpoint, expect):
    """Walk the chain; print the first broken link and exit non-zero on any break."""
    expected = None
    if expect:
        event_id, _, digest = expect.partition(":")
        if not event_id.isdigit() or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
            raise click.ClickException("--expect must look like 42:<64 hex characters>")
        expected = (int(event_id), digest)
    report = ledger.verify(from_checkpoint=from_checkpoint, expect=expected)
    if not report.ok:
        raise click.ClickException(
            f"ledger broken at event {report.bad_event_id}: {report.problem}"
        )
    click.echo(
        f"ledger intact: {report.checked} events checked, head at event {report.last_event_id}"
    )


@ledger_cli.command("checkpoint")
def checkpoint_command():
    """Record the chain's head; print it so it can be kept outside the database too."""
    mark = ledger.checkpoint()
    db.session.commit()
    click.echo(f"{mark.event_id}:{mark.event_hash}")


@keys_cli.command("generate")
@click.option("--key-id", default="k1", show_default=True)
def generate_command(key_id):
    """Print a new key set, ready for one of the FLASK_PORTAL_*_KEYS variables."""
    click.echo(json.dumps(keys.new_keyset(key_id)))


@click.command("demo")
def demo_command():
    """Load the demo data (idempotent) and print three sample preference links."""
    if not current_app.config["PORTAL_DEMO"]:
        raise click.ClickException("the demo data is loaded only with FLASK_PORTAL_DEMO=true")
    summary = demo.load()
    db.session.commit()
    click.echo(summary.describe())
    click.echo("Sample preference links:")
    for about, url in demo.sample_links():
        click.echo(f"  {about}\n    {url}")
    click.echo(f"Sample sign-up form (a business's own page): {links.public_url('/demo/signup')}")


def init_app(app) -> None:
    """Register the commands."""
    commands = (contacts_cli, ledger_cli, keys_cli, staff_cli, mail_cli, consent_cli, demo_command)
    for command in commands:
        app.cli.add_command(command)
    app.cli.add_command(doi_cli.doi_cli)
    mail_cli.add_command(unsubscribe_mail.unsubscribe_command)
    erasure_cli.register(contacts_cli)
    workers.init_app(app)


consent_cli = AppGroup("consent", help="Scheduled consent housekeeping.")


@consent_cli.command("purge")
def purge_command():
    """Destroy sensitive values whose storage consent, and recorded engagement whose tracking
    consent, was withdrawn longer ago than the undo window."""
    destroyed, deleted = workers.purge_withdrawn()
    db.session.commit()
    click.echo(f"destroyed {destroyed} value(s); deleted {deleted} engagement event(s)")


staff_cli = AppGroup("staff", help="Manage back-office accounts.")
mail_cli = AppGroup(
    "mail", help="Inbound mail: record it so that replies are recognised; act on unsubscribe mail."
)


@staff_cli.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(staff.ROLES), required=True)
def staff_create_command(email, role):
    """Create a staff account; the password is read from a prompt or from standard input."""
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        user = staff.create_staff(email, password, role)
    except staff.StaffError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"created {user.role} account {user.email}")


@mail_cli.command("inbound")
@click.argument("sender")
@click.argument("message_id")
def inbound_command(sender, message_id):
    """Record a message received from SENDER, so that an answer to it counts as a reply."""
    try:
        inbound = gate.record_inbound(sender, message_id)
    except (ValueError, contacts.InvalidEmail) as error:
        raise click.ClickException(str(error)) from None
    if inbound is None:
        raise click.ClickException("no contact has that address; nothing recorded")
    db.session.commit()
    click.echo(f"recorded inbound message {inbound.message_id}")
