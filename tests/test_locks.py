"""Stopped processing (P7, B6): staff stop it for a contact, every write path refuses the locked
record, and lifting it needs a reason, mails the contact first and is a ledger event."""

import pytest
import sqlalchemy as sa
from test_backoffice_auth import csrf_token

from portal import consent
from portal import contacts
from portal import export
from portal import jobs
from portal import ledger
from portal import lists
from portal import optin
from portal import outbox
from portal import restriction
from portal import staff
from portal.contacts import OptIn
from portal.contacts import RecordLocked
from portal.db import db


@pytest.fixture
def world(app):
    """A contact with a sensitive value, a list and a consent, nothing locked yet."""
    contact = contacts.add_contact(
        "locked.larry@example.com", first_name="Larry", method="test", actor="test"
    )
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    stage = contacts.define_field("sales_stage", "Sales stage")
    contacts.set_field_value(contact, card, "4111 1111 1111 1234")
    contacts.set_field_value(contact, stage, "lead")
    newsletter = lists.create_list("newsletter", "Newsletter")
    partners = consent.define("partners", "custom", "Share with partners", "We share.")
    consent.decide(contact, partners.current_version, True, method="page", actor="contact")
    db.session.commit()
    return contact, card, stage, newsletter, partners


def _stop(client, contact, reason="The contact asked by phone"):
    page = client.get(f"/staff/contacts/{contact.public_id}/stop-processing")
    return client.post(
        f"/staff/contacts/{contact.public_id}/stop-processing",
        data={"reason": reason, "csrf_token": csrf_token(page.text)},
    )


def test_staff_stop_processing_with_a_reason_and_see_the_lock(agent_client, world, smtp):
    contact = world[0]
    record = agent_client.get(f"/staff/contacts/{contact.public_id}")
    assert "Stop processing" in record.text

    response = _stop(agent_client, contact)
    assert response.status_code == 303
    page = agent_client.get(response.headers["Location"])
    assert "Processing stopped: this record is locked" in page.text
    assert "The contact asked by phone" in page.text
    assert "Only an admin can lift the restriction." in page.text

    assert contact.processing_stopped_at is not None
    assert contact.opt_in_status == OptIn.OPTOUT_CONTACT
    stopped = [e for e in ledger.history(contact.public_id) if e.subject_type == "restriction"]
    assert [(e.action, e.method) for e in stopped] == [("stopped", "staff")]
    assert stopped[0].actor == f"staff:{agent_client.user.id}"  # an id, never an address

    # The contact gets a receipt: had someone else phoned in their name, they would know.
    outbox.work(once=True)
    [receipt] = smtp.to("locked.larry@example.com")
    assert receipt.message["Subject"] == "We have stopped processing your data"


def test_stopping_needs_a_reason(agent_client, world):
    contact = world[0]
    response = _stop(agent_client, contact, reason="  ")
    assert response.status_code == 200
    assert 'class="error"' in response.text and "Give a reason." in response.text
    assert contact.processing_stopped_at is None


def test_every_staff_write_path_refuses_a_locked_record(admin_client, world, runner):
    contact, card, stage, newsletter, partners = world
    db.session.add(staff.RevealPermission(staff_id=admin_client.user.id, field_id=card.id))
    restriction.stop(contact, reason="asked by letter", actor="staff:1")
    db.session.commit()
    events_before = len(ledger.history(contact.public_id))
    base = f"/staff/contacts/{contact.public_id}"

    # The record's edit form.
    form = admin_client.get(f"{base}/edit")
    edited = admin_client.post(
        f"{base}/edit",
        data={
            "csrf_token": csrf_token(form.text),
            "version": str(contact.version),
            "first_name": "Changed",
            "sales_stage": "won",
        },
    )
    assert "locked" in edited.text
    # The address.
    changed = admin_client.post(
        f"{base}/email", data={"csrf_token": csrf_token(form.text), "email": "new@example.com"}
    )
    assert "This record cannot be changed." in changed.text
    # A reveal.
    record = admin_client.get(base)
    revealed = admin_client.post(
        f"{base}/reveal/card_number", data={"csrf_token": csrf_token(record.text)}
    )
    assert "cannot be revealed" in revealed.text
    assert "4111 1111 1111 1234" not in revealed.text
    # A staff opt-in transition.
    marked = admin_client.post(
        f"{base}/opt-in/staff_single_user",
        data={"csrf_token": csrf_token(record.text), "reason": "met at a fair"},
        follow_redirects=True,
    )
    assert "Nothing changed" in marked.text

    # The domain functions the API and the CLI share.
    with pytest.raises(RecordLocked):
        contacts.set_field_value(contact, stage, "won")
    with pytest.raises(RecordLocked):
        lists.set_subscription(contact, newsletter, True, method="staff", actor="staff:1")
    with pytest.raises(RecordLocked):
        consent.decide(contact, partners.current_version, True, method="api", actor="api")
    with pytest.raises(RecordLocked):
        contacts.record_opt_in(contact, OptIn.SINGLE_USER, method="cli", actor="cli")
    with pytest.raises(optin.TransitionRefused):
        optin.transition(contact, optin.Event.STAFF_REVERT, actor="staff:1", method="staff")
    db.session.rollback()

    # An export leaves the locked record out.
    job = export.start(export.contact_filters.Filters(), created_by="test")
    db.session.commit()
    jobs.work(once=True)
    db.session.refresh(job)
    assert job.status == "done"
    assert "locked.larry@example.com" not in export.csv_text(job)

    # The command line: no double opt-in mail for a locked record, and stopping again says so.
    doi_sent = runner.invoke(args=["doi", "send", "locked.larry@example.com"])
    assert doi_sent.exit_code != 0

    result = runner.invoke(
        args=["contacts", "stop-processing", "locked.larry@example.com", "--reason", "again"]
    )
    assert result.exit_code != 0 and "already stopped" in result.output

    db.session.expire_all()
    assert contact.first_name == "Larry"
    assert contact.email == "locked.larry@example.com"
    assert contacts.field_value(contact, "sales_stage") == "lead"
    assert contact.opt_in_status == OptIn.OPTOUT_CONTACT
    assert len(ledger.history(contact.public_id)) == events_before
    assert ledger.verify().ok


def test_a_withdrawal_staff_record_for_the_contact_still_applies(world):
    # Withdrawing only narrows the processing (Art. 7(3)): refusing it would keep sharing.
    contact, _card, _stage, _newsletter, partners = world
    restriction.stop(contact, reason="asked by letter", actor="staff:1")
    state = consent.decide(contact, partners.current_version, False, method="staff", actor="x")
    assert state.state == "revoked"


def test_the_contact_may_still_decide_on_their_own_page(world):
    contact, _card, _stage, newsletter, _partners = world
    restriction.stop(contact, reason="asked by letter", actor="staff:1")
    joined = lists.set_subscription(contact, newsletter, True, method="page+email", actor="contact")
    assert joined.status == "subscribed"


def test_a_locked_record_met_in_any_back_office_view_gets_a_message(admin_client, world, app):
    contact = world[0]
    restriction.stop(contact, reason="asked by letter", actor="staff:1")
    db.session.commit()
    record = admin_client.get(f"/staff/contacts/{contact.public_id}")
    # Another part's view that forgets to catch the lock still answers with a message.
    from portal.backoffice.erasure import record_locked

    with app.test_request_context("/staff/anything", headers={"HX-Request": "true"}):
        fragment = record_locked(RecordLocked(contact))
        assert fragment.status_code == 200
        assert "the record is locked" in fragment.get_data(as_text=True)
    with app.test_request_context("/staff/anything"):
        plain = record_locked(RecordLocked(contact))
        assert plain.status_code == 303
        assert plain.headers["Location"].endswith(f"/staff/contacts/{contact.public_id}")
    assert record.status_code == 200


def _lift(client, contact, reason="The contact withdrew the objection"):
    page = client.get(f"/staff/contacts/{contact.public_id}/lift-restriction")
    return client.post(
        f"/staff/contacts/{contact.public_id}/lift-restriction",
        data={"reason": reason, "csrf_token": csrf_token(page.text)},
    )


def test_only_an_admin_lifts_the_restriction(agent_client, world):
    contact = world[0]
    restriction.stop(contact, reason="asked by letter", actor="staff:1")
    db.session.commit()
    url = f"/staff/contacts/{contact.public_id}/lift-restriction"
    assert agent_client.get(url).status_code == 403


def test_lifting_needs_a_reason(admin_client, world):
    contact = world[0]
    restriction.stop(contact, reason="asked by letter", actor="staff:1")
    db.session.commit()
    response = _lift(admin_client, contact, reason="")
    assert response.status_code == 200 and "Give a reason." in response.text
    assert contact.processing_stopped_at is not None


def test_lifting_mails_the_contact_first_and_is_a_ledger_event(admin_client, world, smtp):
    contact = world[0]
    restriction.stop(contact, reason="asked by letter", actor="staff:1")
    db.session.commit()

    response = _lift(admin_client, contact)
    assert response.status_code == 303
    page = admin_client.get(response.headers["Location"])
    assert "Processing stopped" not in page.text
    assert "The restriction is lifted; the contact was mailed first." in page.text

    # The notice was queued in the same transaction as the lift, before the unlock.
    notice = db.session.scalar(
        sa.select(outbox.OutboxMessage).where(
            outbox.OutboxMessage.subject == "The processing of your data resumes"
        )
    )
    lifted = ledger.history(contact.public_id)[-1]
    assert (lifted.subject_type, lifted.action) == ("restriction", "lifted")
    assert notice.created_at <= lifted.occurred_at

    outbox.work(once=True)
    [received] = [
        m
        for m in smtp.to("locked.larry@example.com")
        if m.message["Subject"] == "The processing of your data resumes"
    ]
    body = received.message.get_body(preferencelist=("plain",)).get_content()
    assert "We are about to lift that restriction" in body
    assert "stay opted out of marketing email" in body

    # Unlocked, but still opted out: only the contact can opt in again (M5).
    assert contact.processing_stopped_at is None
    assert contact.opt_in_status == OptIn.OPTOUT_CONTACT
    contacts.set_field_value(contact, world[2], "won")
    notes = restriction.notes_of(contact)
    assert [(n.action, n.reason) for n in notes] == [
        ("lifted", "The contact withdrew the objection"),
        ("stopped", "asked by letter"),
    ]


def test_lifting_a_record_that_is_not_locked_says_so(admin_client, world):
    response = _lift(admin_client, world[0])
    assert response.status_code == 200
    assert "is not stopped" in response.text


def test_the_command_line_stops_and_lifts_with_a_reason(runner, world, smtp):
    contact = world[0]
    stopped = runner.invoke(
        args=["contacts", "stop-processing", "locked.larry@example.com", "--reason", "by phone"]
    )
    assert stopped.exit_code == 0, stopped.output
    assert contact.processing_stopped_at is not None
    lifted = runner.invoke(
        args=["contacts", "lift-restriction", "locked.larry@example.com", "--reason", "asked"]
    )
    assert lifted.exit_code == 0, lifted.output
    assert "the contact was mailed" in lifted.output
    outbox.work(once=True)
    subjects = [m.message["Subject"] for m in smtp.to("locked.larry@example.com")]
    assert subjects == [
        "We have stopped processing your data",
        "The processing of your data resumes",
    ]
