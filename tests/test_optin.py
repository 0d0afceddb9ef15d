"""The opt-in state machine (M1-M5, B8): every pair of status and event, and the staff side."""

import hashlib
import re
from datetime import timedelta
from html import unescape

import pytest
import sqlalchemy as sa
from test_backoffice_auth import csrf_token

from portal import campaigns
from portal import contacts
from portal import doi
from portal import gate
from portal import jobs
from portal import ledger
from portal import lists
from portal import optin
from portal import outbox
from portal import settings
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.optin import Event
from portal.optin import TransitionRefused

N, SU, SW, D, OU, OC = (
    OptIn.NONE,
    OptIn.SINGLE_USER,
    OptIn.SINGLE_WEBFORM,
    OptIn.DOUBLE,
    OptIn.OPTOUT_USER,
    OptIn.OPTOUT_CONTACT,
)
SAME = "unchanged"

#: PRODUCT.md M5, written out pair by pair: (status, event) -> status after, or SAME.
#: Every pair not listed must be refused. STAFF_REVERT and CONTACT_UNDO restore the status
#: before the opt-out, which the tests below set to Single opt-in (user).
M5 = {
    (N, Event.STAFF_SINGLE_USER): SU,
    **{(s, Event.WEBFORM_TICKED): SW for s in (N, SU)},
    (SW, Event.WEBFORM_TICKED): SAME,
    **{(s, Event.WEBFORM_TICKED): SAME for s in (D, OU, OC)},
    **{(s, Event.DOI_CONFIRMED): D for s in (N, SU, SW, OU, OC)},
    (D, Event.DOI_CONFIRMED): SAME,
    **{(s, Event.STAFF_OPT_OUT): OU for s in (N, SU, SW, D)},
    (OU, Event.STAFF_OPT_OUT): SAME,
    (OU, Event.STAFF_REVERT): SU,
    **{(s, Event.CONTACT_OPT_OUT): OC for s in (N, SU, SW, D, OU)},
    (OC, Event.CONTACT_OPT_OUT): SAME,
    **{(s, Event.EMAIL_CHANGED): N for s in (SU, SW, D)},
    (OC, Event.CONTACT_UNDO): SU,
}
EVENTS_ON_EXISTING = [e for e in Event if e not in (Event.CREATED, Event.CREATED_SINGLE_USER)]


def at_status(address: str, status: OptIn) -> Contact:
    """Return a contact at a status whose status before any opt-out is Single opt-in (user)."""
    contact = contacts.add_contact(
        address, method="staff", actor="t", opt_in=OptIn.SINGLE_USER, reason="fair"
    )
    if status in (OU, OC):
        contacts.record_opt_in(contact, status, method="staff", actor="t")
    elif status != SU:
        contacts.record_opt_in(contact, status, method="staff", actor="t")
    return contact


def opt_in_events(contact: Contact) -> list[ledger.LedgerEvent]:
    return [e for e in ledger.history(contact.public_id) if e.subject_type == "opt_in"]


@pytest.mark.parametrize("status", list(OptIn))
def test_every_event_from_every_status_follows_the_table(app, status):
    for number, event in enumerate(EVENTS_ON_EXISTING):
        contact = at_status(f"{status}-{number}@example.test", status)
        before = len(opt_in_events(contact))
        expected = M5.get((status, event))
        if expected is None:
            with pytest.raises(TransitionRefused) as refused:
                optin.transition(contact, event, actor="agent", method="staff", reason="asked")
            assert refused.value.reason  # says why, in words
            assert contact.opt_in_status == status
            assert len(opt_in_events(contact)) == before
            continue
        after = optin.transition(contact, event, actor="agent", method="staff", reason="asked")
        assert contact.opt_in_status == (status if expected == SAME else expected), event
        assert after == contact.opt_in_status
        events = opt_in_events(contact)
        if expected == SAME:
            assert len(events) == before  # a repeat is harmless: nothing to record
        else:
            assert len(events) == before + 1
            assert (events[-1].value_from, events[-1].value_to) == (status, expected)
            assert (events[-1].actor, events[-1].method) == ("agent", "staff")


def test_the_table_is_exactly_m5():
    rows = {
        (OptIn(state), event): row
        for (state, event), row in optin.TABLE.items()
        if state != optin.NEW
    }
    assert set(rows) == set(M5)
    assert optin.TABLE[optin.NEW, Event.CREATED] == N
    assert optin.TABLE[optin.NEW, Event.CREATED_SINGLE_USER] == SU
    assert {key for key in optin.TABLE if key[0] == optin.NEW} == {
        (optin.NEW, Event.CREATED),
        (optin.NEW, Event.CREATED_SINGLE_USER),
    }


def test_a_new_contact_starts_at_none_or_single_user_only(app):
    for number, event in enumerate(Event):
        contact = Contact(email=f"new-{number}@example.test")
        db.session.add(contact)
        db.session.flush()
        if event in (Event.CREATED, Event.CREATED_SINGLE_USER):
            after = optin.transition(contact, event, actor="t", method="api")
            assert after == (N if event is Event.CREATED else SU)
            (recorded,) = opt_in_events(contact)
            assert recorded.value_from is None  # nothing before a new contact
            with pytest.raises(TransitionRefused, match="only a new contact"):
                optin.transition(contact, event, actor="t", method="api")
        else:
            with pytest.raises(TransitionRefused, match="new contact"):
                optin.transition(contact, event, actor="t", method="api", reason="r")


def test_staff_revert_gives_back_the_status_before_the_opt_out(app):
    for number, status in enumerate((N, SU, SW, D)):
        contact = at_status(f"revert-{number}@example.test", status)
        optin.transition(contact, Event.STAFF_OPT_OUT, actor="a", method="staff", reason="phone")
        optin.transition(contact, Event.STAFF_OPT_OUT, actor="a", method="staff", reason="again")
        assert (
            optin.transition(
                contact, Event.STAFF_REVERT, actor="a", method="staff", reason="mistake"
            )
            == status
        )


def test_staff_cannot_revert_an_opt_out_the_contact_made(app):
    contact = at_status("own@example.test", D)
    optin.transition(contact, Event.CONTACT_OPT_OUT, actor="contact", method="page")
    for event in (Event.STAFF_REVERT, Event.STAFF_OPT_OUT, Event.STAFF_SINGLE_USER):
        with pytest.raises(TransitionRefused):
            optin.transition(contact, event, actor="a", method="staff", reason="asked")
    assert optin.staff_events(contact) == []
    # Only the contact can: by confirming a double opt-in.
    optin.transition(contact, Event.DOI_CONFIRMED, actor="contact", method="double_opt_in")
    assert contact.opt_in_status == D


@pytest.mark.parametrize("event", optin.STAFF_EVENTS)
def test_staff_transitions_need_a_reason(app, event):
    contact = at_status("reason@example.test", OU if event is Event.STAFF_REVERT else N)
    for reason in (None, "", "   "):
        with pytest.raises(TransitionRefused, match="give a reason"):
            optin.transition(contact, event, actor="a", method="staff", reason=reason)
    with pytest.raises(TransitionRefused, match="longer than 200"):
        optin.transition(contact, event, actor="a", method="staff", reason="x" * 201)
    optin.transition(contact, event, actor="a", method="staff", reason="asked by phone")
    # Kept beside the event, which names it (SECURITY 10): see the tests of the record below.
    assert "asked by phone" not in opt_in_events(contact)[-1].evidence_ref
    assert optin.notes_of(contact, optin.REASON)[0].text == "asked by phone"


def test_an_erased_contact_cannot_confirm_a_double_opt_in(app):
    contact = at_status("erased@example.test", N)
    contact.erased_at = utcnow()
    with pytest.raises(TransitionRefused, match="erased"):
        optin.transition(contact, Event.DOI_CONFIRMED, actor="contact", method="double_opt_in")
    assert contact.opt_in_status == N


def test_each_transition_is_a_ledger_event_with_actor_method_and_evidence(app):
    contact = at_status("proof@example.test", N)
    evidence = ledger.Evidence(ip_address="192.0.2.7", user_agent="Mail client")
    optin.transition(
        contact,
        Event.WEBFORM_TICKED,
        actor="contact",
        method="webform",
        evidence_ref="signup:abc",
        evidence=evidence,
    )
    event = opt_in_events(contact)[-1]
    assert (event.value_from, event.value_to) == ("none", "single_webform")
    assert (event.actor, event.method, event.evidence_ref) == ("contact", "webform", "signup:abc")
    assert event.evidence_digest
    assert ledger.verify().ok


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (N, [Event.STAFF_SINGLE_USER, Event.STAFF_OPT_OUT]),
        (SU, [Event.STAFF_OPT_OUT]),
        (SW, [Event.STAFF_OPT_OUT]),
        (D, [Event.STAFF_OPT_OUT]),
        (OU, [Event.STAFF_REVERT]),
        (OC, []),
    ],
)
def test_staff_events_are_those_that_change_the_status_now(app, status, expected):
    assert optin.staff_events(at_status(f"{status}@example.test", status)) == expected


def test_while_processing_is_stopped_staff_can_opt_out_but_not_opt_in(app):
    contact = at_status("locked@example.test", OU)
    contact.processing_stopped_at = utcnow()
    assert optin.staff_events(contact) == []
    with pytest.raises(TransitionRefused, match="processing"):
        optin.transition(contact, Event.STAFF_REVERT, actor="a", method="staff", reason="r")
    with pytest.raises(TransitionRefused, match="processing"):
        optin.record_out_of_band(contact, evidence_text="signed form", actor="a")
    assert contact.opt_in_status == OU


def test_stopping_processing_and_creating_contacts_go_through_the_table(app):
    contact = contacts.add_contact(
        "made@example.test", method="staff", actor="t", opt_in=OptIn.SINGLE_USER, reason="fair"
    )
    contacts.stop_processing(contact, method="page", actor="contact")
    assert [(e.value_from, e.value_to) for e in opt_in_events(contact)] == [
        (None, "single_user"),
        ("single_user", "optout_contact"),
    ]


# --- Out-of-band opt-in (B8) ------------------------------------------------------------------


def test_an_out_of_band_opt_in_needs_its_evidence(app):
    contact = at_status("oob@example.test", N)
    for text in ("", "   "):
        with pytest.raises(TransitionRefused, match="evidence"):
            optin.record_out_of_band(contact, evidence_text=text, actor="staff:1")
    with pytest.raises(TransitionRefused, match="longer than"):
        optin.record_out_of_band(contact, evidence_text="x" * 2001, actor="staff:1")
    assert contact.opt_in_status == N
    assert optin.notes_of(contact) == []


def test_an_out_of_band_opt_in_sets_double_with_its_evidence_in_the_ledger(app):
    contact = at_status("oob2@example.test", OU)
    text = "Replied 'yes please' to our mail of 3 May; ticket 4411"
    note = optin.record_out_of_band(contact, evidence_text=text, actor="staff:1")
    assert contact.opt_in_status == D
    event = opt_in_events(contact)[-1]
    assert (event.value_from, event.value_to) == ("optout_user", "double")
    assert (event.method, event.actor) == ("out_of_band", "staff:1")
    assert event.evidence_ref == f"note:{note.public_id}"
    assert event.text_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert text not in (event.evidence_ref or "")  # the text stays out of the ledger row
    assert [n.text for n in optin.notes_of(contact)] == [text]
    with pytest.raises(TransitionRefused, match="already confirmed"):
        optin.record_out_of_band(contact, evidence_text="again", actor="staff:1")


@pytest.mark.parametrize(
    ("status", "refusal"),
    [
        (N, None),
        (SU, None),
        (SW, None),
        (D, "already confirmed"),
        (OU, None),
        (OC, "opted out themselves; only they can opt in again"),
    ],
)
def test_an_out_of_band_opt_in_from_every_status(app, status, refusal):
    contact = at_status(f"oob-{status}@example.test", status)
    before = len(opt_in_events(contact))
    if refusal is None:
        optin.record_out_of_band(contact, evidence_text="Signed form, folder 12", actor="staff:1")
        assert contact.opt_in_status == D
        assert len(opt_in_events(contact)) == before + 1
        return
    with pytest.raises(TransitionRefused, match=refusal):
        optin.record_out_of_band(contact, evidence_text="Signed form, folder 12", actor="staff:1")
    assert optin.out_of_band_refusal(contact) is not None
    assert contact.opt_in_status == status
    assert len(opt_in_events(contact)) == before
    assert optin.notes_of(contact) == []


def test_the_contact_can_still_end_their_own_opt_out_by_confirming(app):
    contact = at_status("own-oob@example.test", OC)
    with pytest.raises(TransitionRefused):
        optin.record_out_of_band(contact, evidence_text="They said yes on the phone", actor="s")
    # The row the out-of-band record must not borrow stays open to the contact themselves.
    optin.transition(contact, Event.DOI_CONFIRMED, actor="contact", method="double_opt_in")
    assert contact.opt_in_status == D


def test_staff_change_nothing_on_an_erased_record(app):
    for number, status in enumerate((N, OU)):
        contact = at_status(f"gone-{number}@example.test", status)
        contact.erased_at = utcnow()
        before = len(opt_in_events(contact))
        for event in optin.STAFF_EVENTS:
            with pytest.raises(TransitionRefused, match="erased"):
                optin.transition(contact, event, actor="a", method="staff", reason="asked")
        with pytest.raises(TransitionRefused, match="erased"):
            optin.record_out_of_band(contact, evidence_text="signed form", actor="a")
        assert optin.staff_events(contact) == []
        assert (contact.opt_in_status, len(opt_in_events(contact))) == (status, before)


# --- The address changes (M5's last row) -----------------------------------------------------


@pytest.mark.parametrize("status", [OU, OC])
@pytest.mark.parametrize("remembered", [SU, SW, D])
def test_a_new_address_forgets_the_consent_an_opt_out_remembers(app, status, remembered):
    contact = at_status(f"forget-{status}-{remembered}@example.test", remembered)
    contacts.record_opt_in(contact, status, method="staff", actor="t")
    assert optin.restored_by_revert(contact) == remembered
    after = optin.address_changed(contact, actor="staff:1", method="staff")
    assert after == contact.opt_in_status == status  # still opted out
    assert optin.restored_by_revert(contact) == N
    last = opt_in_events(contact)[-1]
    assert (last.subject_ref, last.value_from, last.value_to) == ("before_opt_out", remembered, N)
    assert (last.actor, last.method, last.evidence_ref) == ("staff:1", "staff", "email_changed")
    assert ledger.verify().ok
    event = Event.STAFF_REVERT if status == OU else Event.CONTACT_UNDO
    assert optin.transition(contact, event, actor="a", method="staff", reason="r") == N


@pytest.mark.parametrize("status", list(OptIn))
def test_a_new_address_from_every_status(app, status):
    contact = at_status(f"new-address-{status}@example.test", status)
    if status in (OU, OC):
        contact.opt_in_before_opt_out = N  # nothing consented to forget
    before = len(opt_in_events(contact))
    after = optin.address_changed(contact, actor="staff:1", method="staff")
    expected = N if status in (SU, SW, D) else status
    assert after == contact.opt_in_status == expected
    assert len(opt_in_events(contact)) == before + (status in (SU, SW, D))


# --- The record view -----------------------------------------------------------------------


def record_path(contact: Contact) -> str:
    return f"/staff/contacts/{contact.public_id}"


def post(client, contact, path: str, data: dict):
    page = client.get(record_path(contact))
    return client.post(
        record_path(contact) + path, data={"csrf_token": csrf_token(page.text), **data}
    )


def test_the_record_shows_the_status_and_only_the_allowed_buttons(agent_client):
    contact = at_status("view@example.test", N)
    db.session.commit()
    page = agent_client.get(record_path(contact))
    assert page.status_code == 200
    block = page.text[page.text.index('id="opt-in"') :]
    assert "None" in block
    assert "Mark Single opt-in (user)" in block
    assert "Opt out (the contact asked us)" in block
    assert "Revert the opt-out" not in block
    assert "Send double opt-in email" in block
    assert "Record an out-of-band opt-in" in block

    optin.transition(contact, Event.CONTACT_OPT_OUT, actor="contact", method="page")
    db.session.commit()
    block = agent_client.get(record_path(contact)).text
    block = block[block.index('id="opt-in"') :]
    assert "Opt-out (contact)" in block
    for label in (
        "Mark Single opt-in (user)",
        "Opt out (the contact asked us)",
        "Revert the opt-out",
    ):
        assert label not in block
    assert "Only they can opt in again" in block
    assert "Send double opt-in email" not in block
    # Changed deliberately: an out-of-band opt-in would revert the contact's own opt-out,
    # which M5 leaves to the contact alone. The form is gone and the record says why.
    assert "Record an out-of-band opt-in" not in block
    assert "No out-of-band opt-in can be recorded: the contact opted out themselves" in block


def test_staff_opt_a_contact_out_and_revert_it_with_a_reason(agent_client):
    contact = at_status("staffout@example.test", D)
    db.session.commit()
    response = post(agent_client, contact, "/opt-in/staff_opt_out", {"reason": "asked by phone"})
    assert response.status_code == 303
    assert response.headers["Location"].split("#")[0].endswith(record_path(contact))
    assert contact.opt_in_status == OU
    page = agent_client.get(record_path(contact))
    assert "The opt-in status is now: Opt-out (user)." in page.text
    assert "Revert the opt-out" in page.text

    post(agent_client, contact, "/opt-in/staff_revert", {"reason": "wrong contact"})
    assert contact.opt_in_status == D


#: What staff naturally write: it names the person, their address and their phone.
PERSONAL_REASON = "Ann Smith (ann.smith@example.org, +44 20 7946 0123) phoned, asked to stop"
#: Its parts, none of which a digest or a random id can hold by chance.
PERSONAL_PARTS = ("Ann Smith", "ann.smith@", "+44 20 7946 0123", "phoned", "asked to stop")


def ledger_cells() -> list[str]:
    """Return every value of every ledger event, as text."""
    rows = db.session.execute(sa.select(ledger.LedgerEvent.__table__)).all()
    return [str(value) for row in rows for value in row if value is not None]


def test_the_reason_for_an_opt_out_stays_out_of_the_ledger_and_shows_on_the_record(
    agent_client,
):
    contact = at_status("ann@example.test", D)
    db.session.commit()
    post(agent_client, contact, "/opt-in/staff_opt_out", {"reason": PERSONAL_REASON})
    assert contact.opt_in_status == OU

    cells = ledger_cells()
    assert [part for part in PERSONAL_PARTS if any(part in cell for cell in cells)] == []
    # Staff still read it in the contact's history, beside the event it explains.
    page = unescape(agent_client.get(record_path(contact)).text)
    assert PERSONAL_REASON in page[page.index('<ol class="activity">') :]


def test_a_refused_staff_action_says_why_and_changes_nothing(agent_client):
    contact = at_status("noreason@example.test", N)
    db.session.commit()
    response = post(agent_client, contact, "/opt-in/staff_single_user", {"reason": ""})
    assert response.status_code == 303
    assert contact.opt_in_status == N
    assert "Nothing changed: give a reason." in agent_client.get(record_path(contact)).text

    response = post(agent_client, contact, "/opt-in/staff_revert", {"reason": "x"})
    assert "Nothing changed: only an opt-out set by staff can be reverted." in (
        agent_client.get(record_path(contact)).text
    )
    assert (
        post(agent_client, contact, "/opt-in/doi_confirmed", {"reason": "x"}).status_code == 404
    )  # not a staff event
    assert contact.opt_in_status == N


def test_staff_record_an_out_of_band_opt_in(agent_client):
    contact = at_status("oobview@example.test", N)
    db.session.commit()
    post(agent_client, contact, "/out-of-band", {"evidence": ""})
    page = agent_client.get(record_path(contact)).text
    assert "Nothing changed: describe the evidence" in page
    assert contact.opt_in_status == N

    post(agent_client, contact, "/out-of-band", {"evidence": "Signed form, folder 12"})
    page = agent_client.get(record_path(contact)).text
    assert "Double opt-in recorded, with its evidence." in page
    assert "Signed form, folder 12" in page
    assert contact.opt_in_status == D


def test_staff_send_the_double_opt_in_email_from_the_record(agent_client, smtp):
    contact = at_status("send@example.test", N)
    db.session.commit()
    post(agent_client, contact, "/double-opt-in", {})
    assert "The double opt-in email is on its way." in agent_client.get(record_path(contact)).text
    post(agent_client, contact, "/double-opt-in", {})
    page = agent_client.get(record_path(contact)).text
    assert "less than 24 hours ago" in page
    assert "not confirmed yet (reminders sent: 0)" in page
    outbox.work(once=True)
    (received,) = smtp.to("send@example.test")
    assert re.search(
        r"https://prefs\.example\.test/d/\S+", received.message.get_body(("plain",)).get_content()
    )


def test_staff_actions_need_a_signed_in_user_and_a_csrf_token(app, agent_client):
    contact = at_status("guard@example.test", N)
    db.session.commit()
    anonymous = app.test_client()
    anonymous.environ_base.update(
        {"wsgi.url_scheme": "https", "HTTP_REFERER": "https://localhost/staff/"}
    )
    token = csrf_token(anonymous.get("/staff/sign-in").text)
    for path in ("/opt-in/staff_opt_out", "/double-opt-in", "/out-of-band"):
        response = anonymous.post(
            record_path(contact) + path, data={"reason": "r", "evidence": "e", "csrf_token": token}
        )
        assert response.status_code == 302
        assert "/staff/sign-in" in response.headers["Location"]
        assert (
            agent_client.post(
                record_path(contact) + path, data={"reason": "r", "evidence": "e"}
            ).status_code
            == 400
        )
    assert contact.opt_in_status == N
    assert (
        db.session.scalar(
            sa.select(sa.func.count())
            .select_from(outbox.OutboxMessage)
            .where(outbox.OutboxMessage.recipient == contact.email)
        )
        == 0
    )


# --- A new address in the back office (M5's last row) -----------------------------------------


def test_a_revert_after_a_new_address_gives_none_and_no_campaign_reaches_it(agent_client, smtp):
    newsletter = lists.create_list("newsletter", "Newsletter")
    contact = at_status("first@example.test", D)
    control = at_status("control@example.test", D)
    for member in (contact, control):
        lists.set_subscription(member, newsletter, True, method="staff", actor="t")
    db.session.commit()

    post(agent_client, contact, "/opt-in/staff_opt_out", {"reason": "asked by phone"})
    page = agent_client.get(record_path(contact)).text
    assert "Reverting the opt-out gives back: Double opt-in." in page
    response = post(agent_client, contact, "/email", {"email": "second@example.test"})
    assert response.status_code == 303
    page = agent_client.get(record_path(contact)).text
    assert "Opt-out (user)" in page
    assert "Reverting the opt-out gives back: None." in page
    post(agent_client, contact, "/opt-in/staff_revert", {"reason": "it was a mistake"})
    assert "The opt-in status is now: None." in agent_client.get(record_path(contact)).text
    assert (contact.email, contact.opt_in_status) == ("second@example.test", N)
    assert [(e.subject_ref, e.value_from, e.value_to) for e in opt_in_events(contact)][-3:] == [
        ("", D, OU),
        ("before_opt_out", D, N),
        ("", OU, N),
    ]

    for policy in settings.CAMPAIGN_POLICIES:
        decision = gate.decide(
            gate.Category.CAMPAIGN,
            recipient=contact.email,
            contact=contact,
            list_id=newsletter.id,
            policy=policy,
        )
        assert (decision.allowed, decision.reason) == (False, "policy"), policy
    # Even the widest policy sends the campaign to the control member only.
    settings.save(
        {"campaign_policy": "double_single_user_single_webform"}, based_on=0, author="t"
    )
    campaign = campaigns.create(
        subject="Monthly news",
        text_body="News of the month.\nLeave: {{ unsubscribe_url }}\n",
        html_body="",
        list_id=newsletter.id,
        author="t",
    )
    campaigns.send(campaign, author="t")
    db.session.commit()
    jobs.work(once=True)
    outbox.work(once=True)
    assert len(smtp.to("control@example.test")) == 1
    assert smtp.to("second@example.test") == smtp.to("first@example.test") == []


def test_a_new_address_leaves_the_contacts_own_opt_out_nothing_to_give_back(agent_client):
    contact = at_status("own-first@example.test", D)
    optin.transition(contact, Event.CONTACT_OPT_OUT, actor="contact", method="page")
    db.session.commit()
    post(agent_client, contact, "/email", {"email": "own-second@example.test"})
    assert (contact.email, contact.opt_in_status) == ("own-second@example.test", OC)
    assert optin.restored_by_revert(contact) == N
    last = opt_in_events(contact)[-1]
    assert (last.subject_ref, last.value_from, last.value_to) == ("before_opt_out", D, N)

    post(agent_client, contact, "/out-of-band", {"evidence": "Replied yes, ticket 9"})
    page = unescape(agent_client.get(record_path(contact)).text)
    assert "Nothing changed: the contact opted out themselves; only they can opt in again" in page
    assert contact.opt_in_status == OC
    assert optin.notes_of(contact) == []


def test_a_new_address_gets_no_reminder_of_a_request_mailed_to_the_old_one(
    agent_client, runner, smtp
):
    contact = at_status("signup-old@example.test", N)
    optin.transition(contact, Event.WEBFORM_TICKED, actor="contact", method="webform")
    assert doi.send_request(contact, source="webform", actor="contact").sent
    db.session.commit()
    post(agent_client, contact, "/email", {"email": "signup-new@example.test"})
    assert contact.opt_in_status == N
    request = doi.latest_request(contact)
    assert request.status == "expired"
    assert "was never confirmed" in agent_client.get(record_path(contact)).text
    request.last_sent_at -= timedelta(days=3)  # long past the time a reminder is due
    db.session.commit()
    result = runner.invoke(args=["doi", "remind"])
    assert result.exit_code == 0, result.output
    outbox.work(once=True)
    assert smtp.to("signup-new@example.test") == []


def test_staff_cannot_record_an_out_of_band_opt_in_over_the_contacts_own_opt_out(agent_client):
    contact = at_status("own-view@example.test", D)
    optin.transition(contact, Event.CONTACT_OPT_OUT, actor="contact", method="page")
    db.session.commit()
    response = post(agent_client, contact, "/out-of-band", {"evidence": "Signed form, folder 3"})
    assert response.status_code == 303
    page = unescape(agent_client.get(record_path(contact)).text)
    assert "Nothing changed: the contact opted out themselves" in page
    assert "Signed form, folder 3" not in page
    assert contact.opt_in_status == OC
    assert optin.notes_of(contact) == []


def test_a_staff_transition_posted_for_an_erased_record_is_refused(agent_client):
    contact = at_status("erased-view@example.test", OU)
    contact.erased_at = utcnow()
    db.session.commit()
    post(agent_client, contact, "/opt-in/staff_revert", {"reason": "asked"})
    page = unescape(agent_client.get(record_path(contact)).text)
    assert "Nothing changed: the contact's personal data was erased." in page
    assert contact.opt_in_status == OU
