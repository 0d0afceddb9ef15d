"""Load the benchmark's data and write the load generator's input files.

Run by bench/preference_page.py with the FLASK_* environment of the portal under test:

    python bench/data.py OUT_DIR --pool NAME:CLIENTS:CONTACTS [--pool ...] [--demo]

--demo loads the demo data set (as `flask demo` does, but with the app's instance folder in
OUT_DIR, so nothing is written into the project's own instance/) and writes get-tokens.txt,
the preference links of the demo contacts. Each --pool adds CLIENTS x CONTACTS contacts of
our own, in the page's audience, on every public list and opted in, and writes one file per
client, NAME-<client>.txt, one contact a line:

    manage token <TAB> stamps <TAB> subscribed lists <TAB> the form's hidden fields

so that each load-generator connection changes only contacts no other connection touches.
The stamps are those the page shows in each state the load generator walks the contact
through (as it is, then after leaving each list in turn, then after stopping marketing
email), computed by the portal's own code in a transaction that is rolled back: a client
that does not read the form back (the plain POST answered with a redirect) still sends the
stamp a browser would.
"""

import argparse
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import sqlalchemy as sa

from portal import contacts
from portal import create_app
from portal import demo
from portal import lists
from portal.choices import page_for
from portal.contacts import OptIn
from portal.db import db
from portal.links import form_token
from portal.links import make_token

BATCH = 200


def _pool(value: str) -> tuple[str, int, int]:
    name, clients, per_client = value.split(":")
    return name, int(clients), int(per_client)


def _public_lists() -> list[lists.MailingList]:
    statement = sa.select(lists.MailingList).where(lists.MailingList.public.is_(True))
    return list(db.session.scalars(statement.order_by(lists.MailingList.slug)))


def _add_contacts(name: str, count: int) -> list[int]:
    """Add contacts in the audience (EU), opted in, on every public list; return their ids."""
    public = _public_lists()
    # A run-unique part, so that pools added later in the same database never collide.
    run = secrets.token_hex(3)
    ids = []
    for number in range(count):
        contact = contacts.add_contact(
            f"bench-{name}-{run}-{number:06d}@bench.example",
            first_name="Bench",
            last_name=f"{name.title()} {number}",
            region="EU",
            language="en",
            method="bench",
            actor="bench",
        )
        contacts.record_opt_in(contact, OptIn.DOUBLE, method="email_confirmation", actor="contact")
        for mailing_list in public:
            lists.set_subscription(contact, mailing_list, True, method="bench", actor="bench")
        ids.append(contact.id)
        if len(ids) % BATCH == 0:
            db.session.commit()
    db.session.commit()
    return ids


def _line(contact: contacts.Contact, by_slug: dict[str, lists.MailingList]) -> str:
    """Describe one contact's form and the stamps of the states the load generator makes."""
    page = page_for(contact)
    on_lists = [item for item in page.lists if item.id in page.subscribed]
    # The hidden fields a browser sends with every submit: the form's CSRF token (bound to the
    # contact, valid for an hour) and the consent text versions shown.
    hidden = urlencode(
        [("csrf_token", form_token(contact))]
        + [(f"version:{choice.definition.slug}", choice.version.number) for choice in page.consents]
    )
    stamps = [page.stamp()]
    savepoint = db.session.begin_nested()
    for item in on_lists:
        lists.set_subscription(contact, by_slug[item.slug], False, method="bench", actor="bench")
        stamps.append(page_for(contact).stamp())
    contacts.record_opt_in(contact, OptIn.OPTOUT_CONTACT, method="bench", actor="bench")
    stamps.append(page_for(contact).stamp())
    savepoint.rollback()
    return "\t".join(
        [
            make_token("manage", contact),
            ",".join(stamps),
            ",".join(item.slug for item in on_lists),
            hidden,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--demo", action="store_true", help="load the demo data set first")
    parser.add_argument(
        "--pool", type=_pool, action="append", default=[], metavar="NAME:CLIENTS:CONTACTS"
    )
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(instance_path=str(args.out_dir / "instance"))
    with app.app_context():
        started = time.monotonic()
        if args.demo:
            demo.load()
            db.session.commit()
            demo_contacts = db.session.scalars(
                sa.select(contacts.Contact)
                .where(contacts.Contact.email.like("%@demo.example"))
                .order_by(contacts.Contact.id)
            ).all()
            (args.out_dir / "get-tokens.txt").write_text(
                "".join(make_token("manage", contact) + "\n" for contact in demo_contacts)
            )
        made = 0
        for name, clients, per_client in args.pool:
            ids = _add_contacts(name, clients * per_client)
            made += len(ids)
            by_slug = {item.slug: item for item in _public_lists()}
            for client in range(clients):
                chunk = ids[client * per_client : (client + 1) * per_client]
                rows = [
                    _line(db.session.get(contacts.Contact, contact_id), by_slug)
                    for contact_id in chunk
                ]
                (args.out_dir / f"{name}-{client + 1}.txt").write_text("\n".join(rows) + "\n")
            db.session.rollback()
        db.engine.dispose()
    print(
        f"data: demo={'yes' if args.demo else 'no'}, {made} benchmark contacts "
        f"in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
