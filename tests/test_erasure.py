"""Erasure (P8, B5): requests against their deadline, "Erase personal data", "Delete record",
the receipt, the suppression that keeps the address out, and the erasure log."""

import re
from datetime import timedelta
from html import unescape

import pytest
import sqlalchemy as sa
from test_backoffice_auth import csrf_token
from test_backoffice_auth import field_description
from wtforms.validators import ValidationError

from portal import changes
from portal import consent
from portal import contacts
from portal import doi
from portal import erasure
from portal import export
from portal import gate
from portal import jobs
from portal import ledger
from portal import lists
from portal import mailbox
from portal import optin
from portal import outbox
from portal import restriction
from portal import suppression
from portal.backoffice.erasure import ReasonForm
from portal.contacts import Contact
from portal.contacts import ContactTombstone
from portal.db import db
from portal.db import utcnow

ADDRESS = "zoltana.quibbleworth@example.com"
#: What must not survive an erasure anywhere: the address, the names, the phone, the values.
TRACES = (
    "zoltana.quibbleworth",
    "Zoltana",
    "Quibbleworth",
    "+44 20 7946 0999",
    "Zolly",
    "AB123456C",
    "203.0.113.77",
)


@pytest.fixture
def person(app) -> Contact:
    """A contact who left traces everywhere: fields, values, evidence, mail, pending changes."""
    contact = contacts.add_contact(
        ADDRESS,
        first_name="Zoltana",
        last_name="Quibbleworth",
        phone="+44 20 7946 0999",
        region="EU",
        language="en",
        method="test",
        actor="test",
    )
    nickname = contacts.define_field("nickname", "Nickname", personal=True)
    national_id = contacts.define_field("national_id", "National ID", sensitive=True)
    stage = contacts.define_field("sales_stage", "Sales stage")
    contacts.set_field_value(contact, nickname, "Zolly")
    contacts.set_field_value(contact, national_id, "AB123456C")
    contacts.set_field_value(contact, stage, "ready to buy")
    newsletter = lists.create_list("newsletter", "Newsletter")
    evidence = ledger.Evidence(ip_address="203.0.113.77", user_agent="Zoltana's browser")
    lists.set_subscription(
        contact, newsletter, True, method="page", actor="contact", evidence=evidence
    )
    partners = consent.define("partners", "custom", "Share with partners", "We share.")
    consent.decide(
        contact, partners.current_version, True, method="page", actor="contact", evidence=evidence
    )
    db.session.add(
        changes.PendingChange(
            contact_id=contact.id,
            items=[{"kind": "list", "ref": "newsletter", "value": True, "version": None}],
            rule_version=1,
            language="en",
        )
    )
    db.session.add(changes.Undo(contact_id=contact.id, items=[], language="en"))
    outbox.enqueue(
        category="own_action",
        contact=contact,
        recipient=ADDRESS,
        subject="Hello Zoltana",
        text_body="Dear Zoltana Quibbleworth, your link.",
    )
    bounced = outbox.enqueue(
        category="ad_hoc", recipient=ADDRESS, subject="Zoltana's order", text_body="Zolly!"
    )
    # A mail server's refusal quotes the address, in its own case.
    bounced.status, bounced.reason = "failed", f"550 5.1.1 <{ADDRESS.upper()}>: unknown user"
    mailbox.capture(
        "portal@example.test",
        [ADDRESS],
        f"To: {ADDRESS}\r\nSubject: Hello Zoltana\r\n\r\nDear Zoltana Quibbleworth\r\n".encode(),
    )
    gate.record_inbound(ADDRESS, "<question-1@example.com>")
    doi.send_request(contact, source="staff", actor="staff:1")
    optin.record_out_of_band(
        contact, evidence_text="Reply from Zoltana Quibbleworth of 3 May", actor="staff:1"
    )
    db.session.commit()
    export.start(export.contact_filters.Filters(), created_by="staff:1")
    db.session.commit()
    jobs.work(once=True)
    restriction.stop(contact, reason="Zoltana phoned on Monday", actor="staff:1")
    contacts.request_erasure(contact, method="page", actor="contact", evidence=evidence)
    db.session.commit()
    return contact


def _traces_left(traces: tuple[str, ...] = TRACES) -> list[str]:
    """Return every table cell, in every table, that still holds a trace of the person."""
    found = []
    for table in db.metadata.sorted_tables:
        for row in db.session.execute(sa.select(table)).all():
            for value in row:
                text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                found += [
                    f"{table.name}: {trace}" for trace in traces if trace.lower() in text.lower()
                ]
    return found


def _erase(client, contact):
    page = client.get(f"/staff/contacts/{contact.public_id}/erase")
    assert page.status_code == 200
    return client.post(
        f"/staff/contacts/{contact.public_id}/erase", data={"csrf_token": csrf_token(page.text)}
    )


def test_the_masked_identity_shows_first_letters_only():
    assert erasure.mask_email("jane.doe@example.com") == "j***@e***.com"
    assert erasure.mask_email("x@mail.example.co.uk") == "x***@m***.uk"


def test_erase_asks_first_then_leaves_no_trace_but_a_delivered_receipt(
    admin_client, person, smtp, runner
):
    assert _traces_left()  # the fixture did leave traces
    page = admin_client.get(f"/staff/contacts/{person.public_id}/erase")
    assert "This cannot be undone." in page.text
    assert person.erased_at is None  # the GET only asks

    response = _erase(admin_client, person)
    assert response.status_code == 303
    record = admin_client.get(response.headers["Location"])
    assert "z***@e***.com is erased" in record.text
    assert "Personal data erased" in record.text

    # The receipt leaves through the outbox to a real SMTP server after the erasure.
    outbox.work(once=True)
    [receipt] = smtp.to(ADDRESS)
    assert receipt.message["Subject"] == "Your personal data has been erased"
    text = receipt.message.get_body(preferencelist=("plain",)).get_content()
    assert "This is the last message we send to this address." in text
    assert "Zoltana" not in text
    # The demo mailbox catching that receipt keeps it without the address.
    caught = mailbox.capture("portal@example.test", receipt.rcpt_tos, receipt.raw)
    assert "z***@e***.com" in caught.raw and ADDRESS not in caught.raw.lower()
    db.session.commit()

    assert _traces_left() == []
    db.session.expire_all()
    assert person.email is None and person.first_name is None and person.phone is None
    assert person.region == "EU"  # not personal: kept for reports
    assert contacts.field_value(person, "sales_stage") == "ready to buy"
    assert suppression.is_suppressed(ADDRESS)
    result = runner.invoke(args=["ledger", "verify"])
    assert result.exit_code == 0 and "ledger intact" in result.output
    # Non-personal history stays: the consent and subscription states, the ledger events.
    assert [s.state for s in consent.states_of(person)] == ["granted"]
    assert ledger.history(person.public_id)[-1].action == "erased"


def test_erasure_clears_the_reasons_staff_gave_and_the_ledger_still_verifies(
    admin_client, runner
):
    contact = contacts.add_contact(
        "quentin@example.com", opt_in=contacts.OptIn.SINGLE_USER, method="cli", actor="cli",
        reason="Quentin Marblestone signed up at the fair",
    )
    optin.transition(contact, optin.Event.STAFF_OPT_OUT, actor="staff:1", method="staff",
                     reason="Quentin Marblestone (+44 20 7946 0111) phoned, asked to stop")
    db.session.commit()
    record = unescape(admin_client.get(f"/staff/contacts/{contact.public_id}").text)
    assert "Quentin Marblestone signed up at the fair" in record
    assert "Quentin Marblestone (+44 20 7946 0111) phoned, asked to stop" in record

    _erase(admin_client, contact)
    db.session.expire_all()
    assert _traces_left(("Marblestone", "+44 20 7946 0111")) == []
    assert [note.text for note in optin.notes_of(contact, None)] == [None, None]
    # The history still shows that a reason was given for each change, and that it is gone.
    record = unescape(admin_client.get(f"/staff/contacts/{contact.public_id}").text)
    activity = record[record.index('<ol class="activity">') :]
    assert activity.count('<q class="note">(erased)</q>') == 2
    result = runner.invoke(args=["ledger", "verify"])
    assert result.exit_code == 0 and "ledger intact" in result.output


def test_a_receipt_delayed_by_the_mail_server_keeps_its_address_until_it_goes(
    admin_client, person, smtp
):
    smtp.data_replies.append("451 4.3.0 try again later")
    _erase(admin_client, person)
    outbox.work(once=True)
    receipt = db.session.scalar(
        sa.select(outbox.OutboxMessage).where(outbox.OutboxMessage.category == "erasure_receipt")
    )
    assert (receipt.status, receipt.recipient) == ("queued", ADDRESS)  # delayed, not dropped

    receipt.next_attempt_at = utcnow()
    db.session.commit()
    outbox.work(once=True)
    db.session.refresh(receipt)
    assert (receipt.status, receipt.recipient) == ("sent", "z***@e***.com")
    assert len(smtp.to(ADDRESS)) == 1


def test_the_erasure_log_says_what_was_erased_and_kept_with_a_masked_identity(admin_client, person):
    _erase(admin_client, person)
    page = admin_client.get("/staff/erasure")
    assert "z***@e***.com" in page.text
    assert ADDRESS not in page.text
    [entry] = erasure.log_entries()
    erased = dict(entry.erased_lines())
    assert erased["Personal fields"] == "email, first_name, last_name, phone, nickname"
    assert erased["Sensitive values (destroyed)"] == "national_id"
    assert erased["Pending changes waiting for confirmation"] == "1"
    assert erased["Messages caught by the demo mailbox"] == "1"
    assert erased["The contact's lines in earlier CSV exports"] == "1"
    assert erased["Sign-ups and double opt-in requests waiting for confirmation"] == "1"
    assert "IP addresses and browsers recorded with consent events" in erased
    assert "proof of consent" in " ".join(entry.kept_lines())
    assert "keyed hash" in page.text


def test_erasing_an_erased_record_says_so_and_changes_nothing(admin_client, person, runner):
    _erase(admin_client, person)
    events = len(ledger.history(person.public_id))
    messages = db.session.scalar(sa.select(sa.func.count()).select_from(outbox.OutboxMessage))

    page = admin_client.get(f"/staff/contacts/{person.public_id}/erase", follow_redirects=True)
    assert "was already erased on" in page.text and "Nothing was changed." in page.text
    token = csrf_token(page.text)
    again = admin_client.post(
        f"/staff/contacts/{person.public_id}/erase",
        data={"csrf_token": token},
        follow_redirects=True,
    )
    assert "Nothing was changed." in again.text
    with pytest.raises(erasure.AlreadyErased):
        erasure.erase(person, actor="test")
    result = runner.invoke(args=["contacts", "erase", ADDRESS, "--yes"])
    assert result.exit_code != 0 and "already erased" in result.output

    assert len(ledger.history(person.public_id)) == events
    assert len(erasure.log_entries()) == 1
    total = db.session.scalar(sa.select(sa.func.count()).select_from(outbox.OutboxMessage))
    assert total == messages


def test_the_suppression_keeps_an_erased_address_from_coming_back(
    client, admin_client, person, runner, smtp
):
    _erase(admin_client, person)
    outbox.work(once=True)
    smtp.reset()

    added = runner.invoke(args=["contacts", "add", ADDRESS])
    assert added.exit_code != 0 and "suppression list" in added.output

    signed_up = client.post("/f/newsletter", data={"email": ADDRESS, "marketing": "y"})
    stranger = client.post("/f/newsletter", data={"email": "new.person@example.com"})
    assert signed_up.status_code == stranger.status_code == 303  # the same answer for both
    assert signed_up.headers["Location"] == stranger.headers["Location"]
    db.session.expire_all()
    assert db.session.scalar(sa.select(Contact).where(Contact.email == ADDRESS)) is None
    outbox.work(once=True)
    assert smtp.to(ADDRESS) == []


def test_only_an_admin_erases(agent_client, person):
    assert agent_client.get(f"/staff/contacts/{person.public_id}/erase").status_code == 403
    assert agent_client.get(f"/staff/contacts/{person.public_id}/delete").status_code == 403
    assert agent_client.get("/staff/erasure").status_code == 403


def test_delete_record_leaves_a_tombstone_and_the_same_suppression(
    admin_client, person, smtp, runner
):
    public_id = person.public_id
    page = admin_client.get(f"/staff/contacts/{public_id}/delete")
    assert "a tombstone" in page.text
    response = admin_client.post(
        f"/staff/contacts/{public_id}/delete", data={"csrf_token": csrf_token(page.text)}
    )
    assert response.status_code == 303
    outbox.work(once=True)
    assert len(smtp.to(ADDRESS)) == 1  # the receipt still reaches the address
    db.session.expire_all()

    assert db.session.scalar(sa.select(Contact).where(Contact.public_id == public_id)) is None
    assert db.session.get(ContactTombstone, public_id) is not None
    assert suppression.is_suppressed(ADDRESS)
    assert _traces_left() == []
    assert ledger.history(public_id)[-1].action == "deleted"
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0
    assert admin_client.get(f"/staff/contacts/{public_id}").status_code == 404


def test_the_command_line_erases_after_asking(runner, person, smtp):
    refused = runner.invoke(args=["contacts", "erase", ADDRESS], input="n\n")
    assert refused.exit_code != 0
    assert person.erased_at is None
    result = runner.invoke(args=["contacts", "erase", ADDRESS], input="y\n")
    assert result.exit_code == 0, result.output
    assert "erased z***@e***.com" in result.output
    outbox.work(once=True)
    assert len(smtp.to(ADDRESS)) == 1
    assert _traces_left() == []


def _request(address: str, days_ago: int) -> Contact:
    contact = contacts.add_contact(address, method="test", actor="test")
    contacts.request_erasure(contact, method="page", actor="contact")
    contact.erasure_requested_at = utcnow() - timedelta(days=days_ago)
    return contact


def test_the_requests_page_shows_each_age_against_the_deadline(admin_client, app):
    _request("fresh@example.com", 3)
    _request("late@example.com", 40)
    db.session.commit()
    page = admin_client.get("/staff/erasure")
    rows = page.text.split("<tr")
    late = next(row for row in rows if "late@example.com" in row)
    fresh = next(row for row in rows if "fresh@example.com" in row)
    assert 'class="overdue"' in late and "Overdue" in late and "40 days" in late
    assert "Overdue" not in fresh and "3 days" in fresh and "days left" in fresh
    assert page.text.index("late@example.com") < page.text.index("fresh@example.com")


def test_an_extension_needs_a_reason_is_told_to_the_contact_and_is_capped(admin_client, smtp):
    contact = _request("slow@example.com", 10)
    db.session.commit()
    url = f"/staff/erasure/{contact.public_id}/extend"
    form = admin_client.get(url)
    empty = admin_client.post(
        url, data={"csrf_token": csrf_token(form.text), "months": "1", "reason": ""}
    )
    assert empty.status_code == 200 and "Give a reason" in empty.text

    done = admin_client.post(
        url,
        data={
            "csrf_token": csrf_token(form.text),
            "months": "2",
            "reason": "We must collect records from three archives.",
        },
    )
    assert done.status_code == 303
    request = erasure.request_of(contact)
    assert request.deadline == erasure.add_months(contact.erasure_requested_at, 3)
    outbox.work(once=True)
    [told] = smtp.to("slow@example.com")
    body = told.message.get_body(preferencelist=("plain",)).get_content()
    assert "We must collect records from three archives." in body
    assert request.deadline.date().isoformat() in body
    assert "extended by 2 months" in admin_client.get("/staff/erasure").text
    record = admin_client.get(f"/staff/contacts/{contact.public_id}").text
    assert f"it is due by {request.deadline.date().isoformat()}" in record
    assert "Extended by 2 months: We must collect records from three archives." in record

    more = admin_client.post(
        url, data={"csrf_token": csrf_token(form.text), "months": "1", "reason": "Still more."}
    )
    assert more.status_code == 200
    assert "at most 2 further months" in more.text


def test_an_extension_the_form_does_not_offer_is_refused_beside_the_choice(admin_client, smtp):
    contact = _request("slow@example.com", 10)
    db.session.commit()
    deadline = erasure.request_of(contact).deadline
    url = f"/staff/erasure/{contact.public_id}/extend"
    form = admin_client.get(url)
    response = admin_client.post(
        url, data={"csrf_token": csrf_token(form.text), "months": "7", "reason": "Busy."}
    )
    assert response.status_code == 200
    error = re.search(r'<p class="error" id="months-error">([^<]*)</p>', response.text)
    assert error and error.group(1) == "Choose one of the offered values."
    options = re.findall(r'<input[^>]*name="months"[^>]*>', response.text)
    assert len(options) == 2
    assert all('aria-invalid="true"' in option and "months-error" in option for option in options)
    assert "Busy.</textarea>" in response.text  # the reason typed stays
    db.session.expire_all()
    assert erasure.request_of(contact).deadline == deadline
    outbox.work(once=True)
    assert not smtp.to("slow@example.com")  # the contact is told nothing


def test_an_overdue_request_cannot_be_extended_any_more(admin_client):
    contact = _request("late@example.com", 40)
    db.session.commit()
    with pytest.raises(erasure.ErasureError, match="deadline has passed"):
        erasure.extend(contact, months=1, reason="busy", actor="test")


def test_months_are_calendar_months():
    start = utcnow().replace(year=2027, month=1, day=31)
    assert erasure.add_months(start, 1).date().isoformat() == "2027-02-28"
    assert erasure.add_months(start, 3).date().isoformat() == "2027-04-30"
    assert erasure.add_months(start.replace(month=11, day=15), 2).year == 2028


def test_the_command_line_deletes_a_record_when_asked_to(runner, person, smtp):
    public_id = person.public_id
    result = runner.invoke(args=["contacts", "erase", ADDRESS, "--delete", "--yes"])
    assert result.exit_code == 0, result.output
    assert "deleted z***@e***.com" in result.output
    assert db.session.get(ContactTombstone, public_id) is not None
    outbox.work(once=True)
    assert len(smtp.to(ADDRESS)) == 1
    assert _traces_left() == []
    assert runner.invoke(args=["ledger", "verify"]).exit_code == 0


def test_a_receipt_the_mail_server_refuses_keeps_no_address_in_its_reason(
    admin_client, person, smtp
):
    smtp.data_replies.append(f"550 5.1.1 <{ADDRESS.upper()}>: unknown user")
    _erase(admin_client, person)
    outbox.work(once=True)
    receipt = db.session.scalar(
        sa.select(outbox.OutboxMessage).where(outbox.OutboxMessage.category == "erasure_receipt")
    )
    assert receipt.status == "failed"
    assert "unknown user" in receipt.reason  # the server's answer is kept...
    assert ADDRESS not in receipt.reason.lower()  # ...but not the address it quotes
    assert "z***@e***.com" in receipt.reason.lower()


def test_two_errors_on_a_reason_are_read_together(admin_client, person, monkeypatch):
    def also_refused(form, field):
        raise ValidationError("Name who asked.")

    monkeypatch.setattr(ReasonForm, "validate_reason", also_refused, raising=False)
    path = f"/staff/contacts/{person.public_id}/stop-processing"
    page = admin_client.get(path)
    answer = admin_client.post(path, data={"csrf_token": csrf_token(page.text),
                                           "reason": "x" * (restriction.MAX_REASON + 1)})
    assert answer.status_code == 200
    description = field_description(answer.text, "reason")
    assert "cannot be longer than" in description and "Name who asked." in description
