"""One-click unsubscribe (M7, RFC 2369, RFC 8058): its token, its headers and what it does.

The token names a contact and a list, and nothing else: no expiry and no link version, so an
unsubscribe link in a mail from years ago still works. It is signed with its own key set
(``unsubscribe``), so rotating the link or session keys never breaks it, and its salt is
its own, so it can do nothing but unsubscribe from that one list.

The unsubscribe link in a mail's body (N5) has a token of its own, signed with the same keys
under another salt: it also carries the contact's link version and when it was signed. For as
long as a page link would live (``PORTAL_LINK_MAX_AGE["manage"]``) and until the contact's
links are revoked, opening it leads to the whole preference page; after that it still leads
to a page whose one button leaves that list, and to nothing more.
"""

import time
from functools import lru_cache
from urllib.parse import quote

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadData
from itsdangerous import URLSafeSerializer
from itsdangerous import URLSafeTimedSerializer

from portal import changes
from portal import ledger
from portal import lists
from portal import webforms
from portal.choices import LIST
from portal.contacts import Contact
from portal.db import db
from portal.keys import UnknownKey
from portal.keys import keyset
from portal.ledger import Evidence
from portal.links import CLOCK_SKEW_SECONDS
from portal.links import TokenInvalid
from portal.links import public_url

SALT = "portal.unsubscribe"
#: The salt of the body's unsubscribe link, which may also open the page while it is fresh.
PAGE_SALT = "portal.unsubscribe.page"
METHOD = "one_click"

#: The contact and the list a token names, in one query, built once (constructing a
#: statement costs more than running it): this is the hot path of a mail client's button.
_NAMED_BY_TOKEN = (
    sa.select(Contact, lists.MailingList)
    .join(lists.MailingList, lists.MailingList.id == sa.bindparam("list_id"))
    .where(Contact.public_id == sa.bindparam("public_id"))
)


@lru_cache(maxsize=16)
def _serializer(key: bytes) -> URLSafeSerializer:
    return URLSafeSerializer(key, salt=SALT)


@lru_cache(maxsize=16)
def _page_serializer(key: bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(key, salt=PAGE_SALT)


def make_token(contact: Contact, mailing_list: lists.MailingList) -> str:
    """Return the long-lived unsubscribe token naming this contact and this list."""
    keys = keyset("unsubscribe")
    signed = _serializer(keys.active_key).dumps([contact.public_id, mailing_list.id])
    return f"{keys.active_id}.{signed}"


def _ids(payload, size: int) -> tuple[str, int] | None:
    """Return the (public id, list id) a payload of `size` items starts with, or None."""
    if (
        not isinstance(payload, list)
        or len(payload) != size
        or not isinstance(payload[0], str)
        or not all(isinstance(item, int) and not isinstance(item, bool) for item in payload[1:])
    ):
        return None
    return payload[0], payload[1]


def named(public_id: str, list_id: int) -> tuple[Contact, lists.MailingList]:
    found = db.session.execute(
        _NAMED_BY_TOKEN, {"public_id": public_id, "list_id": list_id}
    ).first()
    contact, mailing_list = found if found is not None else (None, None)
    if contact is None or contact.erased_at is not None or mailing_list is None:
        raise TokenInvalid("the unsubscribe link names nobody on file")
    return contact, mailing_list


def token_ids(token: str) -> tuple[str, int]:
    """Return the contact's public id and the list id a token names (not looked up), or
    raise TokenInvalid."""
    key_id, _, signed = (token or "").partition(".")
    try:
        payload = _serializer(keyset("unsubscribe").key(key_id)).loads(signed)
    except (UnknownKey, BadData):
        raise TokenInvalid("the unsubscribe link is not valid") from None
    ids = _ids(payload, 2)
    if ids is None:
        raise TokenInvalid("the unsubscribe link is not valid")
    return ids


def read_token(token: str) -> tuple[Contact, lists.MailingList]:
    """Return the contact and list a token names, or raise TokenInvalid."""
    return named(*token_ids(token))


def make_page_token(contact: Contact, mailing_list: lists.MailingList) -> str:
    """Return the token of a mail body's unsubscribe link (N5): see the module's docstring."""
    keys = keyset("unsubscribe")
    payload = [contact.public_id, mailing_list.id, contact.link_version]
    return f"{keys.active_id}.{_page_serializer(keys.active_key).dumps(payload)}"


def read_landing(token: str) -> tuple[Contact, lists.MailingList, bool]:
    """Return the contact and list an unsubscribe link names, and whether it opens their page.

    Either kind of token is accepted: a body link's, which opens the page while it is as young
    as a page link and its link version is the contact's, and the one-click token of the
    List-Unsubscribe header, which never does. Raise TokenInvalid for anything else.
    """
    key_id, _, signed = (token or "").partition(".")
    try:
        key = keyset("unsubscribe").key(key_id)
    except UnknownKey:
        raise TokenInvalid("the unsubscribe link is not valid") from None
    try:
        payload, signed_at = _page_serializer(key).loads(signed, return_timestamp=True)
    except BadData:
        return (*read_token(token), False)
    ids = _ids(payload, 3)
    if ids is None:
        raise TokenInvalid("the unsubscribe link is not valid")
    contact, mailing_list = named(*ids)
    age = time.time() - signed_at.timestamp()
    fresh = -CLOCK_SKEW_SECONDS <= age <= current_app.config["PORTAL_LINK_MAX_AGE"]["manage"]
    return contact, mailing_list, fresh and payload[2] == contact.link_version


def one_click_url(contact: Contact, mailing_list: lists.MailingList) -> str:
    """Return the https URL a mail client POSTs to (and a person opens), from the base URL."""
    return public_url(f"/o/{make_token(contact, mailing_list)}")


def visible_url(contact: Contact, mailing_list: lists.MailingList) -> str:
    """Return the unsubscribe link for a mail's body: it lands on the preference page (N5)
    while it is as young as a page link and not revoked, and on the one button after that."""
    return public_url(f"/o/{make_page_token(contact, mailing_list)}")


def headers(contact: Contact, mailing_list: lists.MailingList) -> dict[str, str]:
    """Return the List-Unsubscribe and List-Unsubscribe-Post headers of a campaign mail."""
    url = one_click_url(contact, mailing_list)
    targets = [f"<{url}>"]
    inbound = current_app.config.get("PORTAL_UNSUBSCRIBE_MAILTO")
    if inbound:
        token = make_token(contact, mailing_list)
        targets.append(f"<mailto:{inbound}?subject={quote('unsubscribe ' + token)}>")
    return {
        "List-Unsubscribe": ", ".join(targets),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def unsubscribe(
    contact: Contact,
    mailing_list: lists.MailingList,
    *,
    evidence: Evidence | None = None,
    method: str = METHOD,
) -> bool:
    """Take the contact off this list only, at once; return whether anything changed.

    `method` is how the request came, for the ledger: the one-click POST, or a mailto reply.

    Leaving cancels the pending grants of the same list (a page's confirmation link, a
    web-form sign-up awaiting its double opt-in), so an old link cannot undo this "no" (R5).
    A second call changes nothing: nor does it cancel an ask to join again made since.
    """
    # Two simultaneous POSTs (a mail client retrying) must give one event: the ledger's head
    # first (the order of every writer), then the subscription as the last writer left it.
    ledger.lock_head()
    current = db.session.scalar(
        lists.LOCKED_SUBSCRIPTION, {"contact_id": contact.id, "list_id": mailing_list.id}
    )
    if current is None or current.status != "subscribed":
        return False
    lists.set_subscription(
        contact,
        mailing_list,
        False,
        method=method,
        actor="contact",
        evidence_ref=f"list:{mailing_list.slug}",
        evidence=evidence,
    )
    withdrawn = [changes.Item(LIST, mailing_list.slug, False)]
    # The page's own rule for withdrawals, so both ways of leaving a list cancel alike.
    changes.cancel_pending_grants(contact, withdrawn)
    webforms.forget_list(contact, mailing_list)
    return True
