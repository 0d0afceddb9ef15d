"""Campaigns (M4, M7, N4, R4) against a real SMTP server on loopback, with the job and outbox
workers: staff write, preview and send; the audience obeys the policy; bad input queues nothing;
a killed job resumes without a second copy; an opt-out during sending stops the mail."""

import re
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from test_backoffice_auth import csrf_token

from portal import campaigns
from portal import contacts
from portal import jobs
from portal import lists
from portal import outbox
from portal import settings
from portal.campaigns import sending
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow

BASE = "https://prefs.example.test"
TEXT = "Hello {{ first_name }},\nnews of the month.\nLeave: {{ unsubscribe_url }}\n"
HTML = "<p>Hello {{ first_name }}</p><p>News of the <strong>month</strong>.</p>"


class Killed(BaseException):
    """A worker dying mid-job: not an Exception, so the job cannot record a failure."""


@pytest.fixture
def newsletter(app):
    found = lists.create_list("newsletter", "Newsletter")
    db.session.commit()
    return found


def add(email, status=OptIn.DOUBLE, mailing_list=None, *, first_name="Ada"):
    contact = contacts.add_contact(email, first_name=first_name, method="staff", actor="test")
    if status is not OptIn.NONE:
        contacts.record_opt_in(contact, status, method="staff", actor="test")
    if mailing_list is not None:
        lists.set_subscription(contact, mailing_list, True, method="staff", actor="test")
    return contact


@pytest.fixture
def audience(newsletter):
    """Three who may receive it, and one each the policy, the list or an opt-out excludes."""
    people = {
        "ada": add("ada@example.test", OptIn.DOUBLE, newsletter, first_name="Ada"),
        "bob": add("bob@example.test", OptIn.DOUBLE, newsletter, first_name="Bob"),
        "cy": add("cy@example.test", OptIn.DOUBLE, newsletter, first_name="Cy"),
        "single": add("single@example.test", OptIn.SINGLE_USER, newsletter),
        "outside": add("outside@example.test", OptIn.DOUBLE, None),
        "optout": add("optout@example.test", OptIn.OPTOUT_CONTACT, newsletter),
    }
    db.session.commit()
    return people


def draft(mailing_list, **values) -> campaigns.Campaign:
    fields = {"subject": "Monthly news", "text_body": TEXT, "html_body": HTML}
    fields.update(values)
    campaign = campaigns.create(**fields, list_id=mailing_list.id, author="test")
    db.session.commit()
    return campaign


def deliver_all() -> None:
    jobs.work(once=True)
    outbox.work(once=True)


def recipients(smtp) -> list[str]:
    return sorted(address for message in smtp.messages for address in message.rcpt_tos)


def outbox_rows() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(outbox.OutboxMessage))


def parts(message) -> dict[str, str]:
    return {
        part.get_content_type(): part.get_content()
        for part in message.walk()
        if not part.is_multipart()
    }


def test_staff_write_preview_and_send_a_campaign(agent_client, audience, newsletter, smtp):
    form = agent_client.get("/staff/campaigns/new")
    assert form.status_code == 200
    created = agent_client.post(
        "/staff/campaigns/new",
        data={
            "csrf_token": csrf_token(form.text),
            "subject": "Monthly news",
            "list_id": newsletter.id,
            "text_body": TEXT,
            "html_body": HTML,
        },
    )
    assert created.status_code == 303
    page_url = created.headers["Location"]
    page = agent_client.get(page_url)
    assert "Monthly news" in page.text and "Not sent yet." in page.text
    assert "3 contacts" in page.text  # the double opt-ins on the list, nobody else

    preview = agent_client.get(page_url + "/preview", query_string={"contact": "bob@example.test"})
    assert preview.status_code == 200
    assert "Hello Bob," in preview.text
    assert "/o/" in preview.text  # the unsubscribe link, and the footer's preference link
    campaign = db.session.scalar(sa.select(campaigns.Campaign))
    frame = agent_client.get(
        page_url + "/preview/html", query_string={"contact": audience["bob"].public_id}
    )
    assert "<p>Hello Bob</p>" in frame.text
    assert "sandbox" in frame.headers["Content-Security-Policy"]
    assert outbox_rows() == 0  # a preview sends nothing

    confirm = agent_client.get(page_url + "/send")
    assert "3 members" in confirm.text or "the 3 members" in confirm.text
    sent = agent_client.post(page_url + "/send", data={"csrf_token": csrf_token(confirm.text)})
    assert sent.status_code == 303
    deliver_all()

    assert recipients(smtp) == ["ada@example.test", "bob@example.test", "cy@example.test"]
    message = smtp.to("ada@example.test")[0].message
    assert message["Subject"] == "Monthly news"
    body = parts(message)
    assert body["text/plain"].startswith("Hello Ada,")
    assert "<strong>month</strong>" in body["text/html"]
    db.session.refresh(campaign)
    assert campaign.status == "sent"
    page = agent_client.get(page_url)
    assert re.search(r"Sent: <strong>3</strong>", page.text)


def test_list_unsubscribe_points_at_the_base_url_even_with_a_forged_host(
    app, agent_client, audience, newsletter, smtp
):
    campaign = draft(newsletter)
    confirm = agent_client.get(f"/staff/campaigns/{campaign.id}/send")
    forged = {
        "Host": "attacker.example",
        "X-Forwarded-Host": "attacker.example",
        "Referer": "https://attacker.example/staff/",
    }
    # The staff member's session, as a browser tricked into that host would send it.
    name = app.config["SESSION_COOKIE_NAME"]
    agent_client.set_cookie(name, agent_client.get_cookie(name).value, domain="attacker.example")
    sent = agent_client.post(
        f"/staff/campaigns/{campaign.id}/send",
        headers=forged,
        data={"csrf_token": csrf_token(confirm.text)},
    )
    # The test app trusts any Host (TRUSTED_HOSTS is unset in tests), so the forged one is
    # what the request carried: the mail must not obey it.
    assert sent.status_code == 303
    deliver_all()

    message = smtp.to("ada@example.test")[0].message
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    targets = [item.strip() for item in message["List-Unsubscribe"].split(",")]
    assert all(item.startswith("<") and item.endswith(">") for item in targets)
    https = [urlsplit(item[1:-1]) for item in targets if item.startswith("<https:")]
    assert len(https) == 1
    assert f"{https[0].scheme}://{https[0].netloc}" == BASE
    mail_text = parts(message)["text/plain"]
    assert "attacker.example" not in message.as_string()
    assert f"Leave: {BASE}/" in mail_text


def test_the_audience_follows_the_campaign_policy(app, audience, newsletter, smtp):
    settings.save({"campaign_policy": "double_single_user"}, based_on=0, author="test")
    campaign = draft(newsletter)
    campaigns.send(campaign, author="test")
    db.session.commit()
    deliver_all()
    assert "single@example.test" in recipients(smtp)
    assert "optout@example.test" not in recipients(smtp)
    assert "outside@example.test" not in recipients(smtp)


def test_templates_see_masked_values_only_and_html_is_sanitized(app, newsletter, smtp):
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    ada = add("ada@example.test", OptIn.DOUBLE, newsletter)
    contacts.set_field_value(ada, card, "4111111111111111")
    db.session.commit()
    campaign = draft(
        newsletter,
        text_body="Card: {{ fields.card_number }}\n",
        html_body='<p onclick="steal()">Card {{ fields.card_number }}</p><script>x()</script>'
        "<p>{{ first_name }}</p>",
    )
    subject, text, html = campaigns.render(campaign, ada)
    assert "Card: ••••••••••••1111" in text
    assert "4111111111111111" not in text + html
    assert "<script" not in html and "onclick" not in html
    ada.first_name = "<b>Ada</b>"
    assert "&lt;b&gt;Ada&lt;/b&gt;" in campaigns.render(campaign, ada)[2]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("subject", "Hello\r\nBcc: everyone@example.test", "without line breaks"),
        ("subject", "Hello\nthere", "without line breaks"),
        ("text_body", "x" * 300_000, "larger than"),
        ("text_body", "Hello {{ first_name", "line 1"),
        ("text_body", "Hello {{ password }}", "unknown placeholder 'password'"),
        ("html_body", "{{ first_name.__class__.__mro__ }}", "cannot be rendered"),
        ("list_id", "999999", "Not a valid choice"),
    ],
)
def test_bad_input_is_refused_next_to_its_field_and_nothing_is_queued(
    agent_client, newsletter, field, value, message
):
    form = agent_client.get("/staff/campaigns/new")
    data = {
        "csrf_token": csrf_token(form.text),
        "subject": "Monthly news",
        "list_id": newsletter.id,
        "text_body": TEXT,
        "html_body": HTML,
        field: value,
    }
    answer = agent_client.post("/staff/campaigns/new", data=data)
    assert answer.status_code == 200
    error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', answer.text)
    assert error and message in error.group(1).replace("&#39;", "'")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(campaigns.Campaign)) == 0
    assert outbox_rows() == 0


def test_a_malformed_or_unknown_preview_contact_gets_a_clear_answer(agent_client, newsletter):
    campaign = draft(newsletter)
    url = f"/staff/campaigns/{campaign.id}/preview"
    malformed = agent_client.get(url, query_string={"contact": "not an@address"})
    assert malformed.status_code == 200
    assert "not a valid email address" in malformed.text
    unknown = agent_client.get(url, query_string={"contact": "nobody@example.test"})
    assert "No contact has this email address or id." in unknown.text
    assert agent_client.get(url + "/html", query_string={"contact": "x"}).status_code == 404


def test_a_job_killed_mid_way_resumes_without_a_second_copy(app, newsletter, smtp, monkeypatch):
    monkeypatch.setattr(sending, "CHUNK", 1)  # one recipient per job item
    people = [add(f"r{number}@example.test", OptIn.DOUBLE, newsletter) for number in range(5)]
    db.session.commit()
    campaign = draft(newsletter)
    job = campaigns.send(campaign, author="test")
    db.session.commit()

    def die_after_two(current):
        if current.done == 2:
            raise Killed

    with pytest.raises(Killed):
        jobs.run(jobs.claim(job.id), on_progress=die_after_two)
    db.session.rollback()
    outbox.work(once=True)  # the outbox worker meanwhile sends what was queued
    assert len(smtp.messages) == 2

    # The dead worker's lease runs out; another worker takes the job and finishes it.
    job = db.session.get(jobs.Job, job.id)
    assert job.status == "running" and job.done == 2
    job.lease_until = utcnow()
    db.session.commit()
    deliver_all()
    assert recipients(smtp) == sorted(person.email for person in people)

    # Even a job walking the list again from the start queues nobody twice.
    job = db.session.get(jobs.Job, job.id)
    job.status, job.cursor = "queued", 0
    db.session.commit()
    deliver_all()
    assert len(smtp.messages) == 5
    assert db.session.get(jobs.Job, job.id).outcomes["already queued"] == 5
    assert outbox_rows() == 5


def test_a_chunk_of_recipients_is_queued_in_one_flush(app, audience, newsletter):
    # One flush, not one a message: on PostgreSQL, one INSERT for the whole chunk.
    campaign = draft(newsletter)
    campaigns.send(campaign, author="test")
    db.session.commit()
    flushed = []

    def count(session, _context):
        queued = [row for row in session.new if isinstance(row, outbox.OutboxMessage)]
        if queued:
            flushed.append(len(queued))

    sa.event.listen(db.session(), "after_flush", count)
    try:
        jobs.work(once=True)
    finally:
        sa.event.remove(db.session(), "after_flush", count)

    assert flushed == [3]
    assert outbox_rows() == 3


def test_a_contact_who_opts_out_while_it_is_sending_receives_nothing_more(
    agent_client, audience, newsletter, smtp
):
    campaign = draft(newsletter)
    campaigns.send(campaign, author="test")
    db.session.commit()
    jobs.work(once=True)
    tally = outbox.Tally()
    outbox.deliver(outbox.claim(1), tally)  # the first message goes out
    assert recipients(smtp) == ["ada@example.test"]

    # Bob leaves all marketing mail while the rest of the campaign is still queued.
    bob = db.session.get(contacts.Contact, audience["bob"].id)
    contacts.record_opt_in(bob, OptIn.OPTOUT_CONTACT, method="page", actor="contact")
    db.session.commit()
    outbox.work(once=True)
    assert recipients(smtp) == ["ada@example.test", "cy@example.test"]

    page = agent_client.get(f"/staff/campaigns/{campaign.id}")
    assert re.search(r"Sent: <strong>2</strong>", page.text)
    assert re.search(r"Skipped: <strong>1</strong>", page.text)
    assert "the campaign policy does not admit the contact&#39;s opt-in status: 1" in page.text


def test_the_counts_refresh_with_htmx_and_without(agent_client, audience, newsletter, smtp):
    campaign = draft(newsletter)
    campaigns.send(campaign, author="test")
    db.session.commit()
    url = f"/staff/campaigns/{campaign.id}"
    page = agent_client.get(url)
    assert "Refresh to see the latest counts" in page.text  # the way without JavaScript
    assert 'hx-trigger="every 2s"' in page.text
    jobs.work(once=True)
    fragment = agent_client.get(url, headers={"HX-Request": "true"})
    assert "HX-Request" in fragment.headers["Vary"]
    assert fragment.text.lstrip().startswith('<section id="campaign-counts"')
    assert re.search(r"Waiting to be sent: <strong>3</strong>", fragment.text)
    outbox.work(once=True)
    done = agent_client.get(url, headers={"HX-Request": "true"})
    assert re.search(r"Sent: <strong>3</strong>", done.text)
    assert "hx-trigger" not in done.text  # nothing left to wait for: the polling stops


def test_a_sent_campaign_is_neither_edited_nor_sent_twice(agent_client, audience, newsletter):
    campaign = draft(newsletter)
    campaigns.send(campaign, author="test")
    db.session.commit()
    edit = agent_client.get(f"/staff/campaigns/{campaign.id}/edit")
    assert edit.status_code == 303
    confirm = agent_client.get(f"/staff/campaigns/{campaign.id}/send")
    assert confirm.status_code == 303
    with pytest.raises(campaigns.CampaignError):
        campaigns.send(campaign, author="test")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(jobs.Job)) == 1


def test_staff_must_sign_in(app, newsletter):
    campaign = draft(newsletter)
    browser = app.test_client()
    for url in (
        "/staff/campaigns",
        f"/staff/campaigns/{campaign.id}",
        f"/staff/campaigns/{campaign.id}/preview?contact=a@example.test",
    ):
        answer = browser.get(url)
        assert answer.status_code in (302, 303) and "/staff/sign-in" in answer.headers["Location"]


def test_the_demo_has_a_draft_for_its_newsletter(app, newsletter):
    first = campaigns.ensure_demo_draft("newsletter", author="demo")
    again = campaigns.ensure_demo_draft("newsletter", author="demo")
    assert first is again and first.status == "draft"
    assert campaigns.ensure_demo_draft("no-such-list", author="demo") is None
