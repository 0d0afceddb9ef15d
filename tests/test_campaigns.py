"""Campaigns (M4, M7, N4, R4) against a real SMTP server on loopback, with the job and outbox
workers: staff write, preview and send; the audience obeys the policy; bad input queues nothing;
a killed job resumes without a second copy; an opt-out during sending stops the mail."""

import re
from html import unescape
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from test_backoffice_auth import csrf_token
from test_backoffice_auth import field_description
from test_preferences import read_document
from wtforms.validators import ValidationError

from portal import campaigns
from portal import consent
from portal import contacts
from portal import gate
from portal import jobs
from portal import lists
from portal import outbox
from portal import settings
from portal import suppression
from portal.backoffice import NEW_TAB_BASE
from portal.backoffice.campaigns import CampaignForm
from portal.campaigns import sending
from portal.contacts import Contact
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.erasure import forget as erasure

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


def add(email, status=OptIn.DOUBLE, mailing_list=None, *, first_name="Ada", region=None):
    contact = contacts.add_contact(
        email, first_name=first_name, region=region, method="staff", actor="test"
    )
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


def test_the_html_part_is_a_whole_document_in_the_contacts_language_titled_with_the_subject(
    agent_client, newsletter, smtp
):
    subject = "Neuigkeiten & Angebote <im März>"
    settings.save({"footer_html": "<p>Beispiel GmbH</p>"}, based_on=0, author="test")
    tracked = consent.define("tracking", "tracking", "Engagement tracking",
                             "We may record when you open our emails.")
    lena = add("lena@example.test", OptIn.DOUBLE, newsletter, first_name="Lena")
    lena.language = "de"
    add("ada@example.test", OptIn.DOUBLE, newsletter)  # no language on file: the default
    consent.decide(lena, tracked.current_version, True, method="test", actor="test")
    campaign = draft(newsletter, subject=subject)
    campaigns.send(campaign, author="test")
    db.session.commit()
    deliver_all()

    message = smtp.to("lena@example.test")[0].message
    assert message["Subject"] == subject
    html = parts(message)["text/html"]
    document = read_document(html)
    assert (document.lang, document.title) == ("de", subject)
    assert message["Content-Language"] == "de"
    # The body holds the staff's HTML, then the open pixel and the footer, in that order.
    body = html[html.index("<body>"):html.index("</body>")]
    assert body.index("<p>Hello Lena</p>") < body.index("/t/o/") < body.index("Beispiel GmbH")
    ada = smtp.to("ada@example.test")[0].message
    assert read_document(parts(ada)["text/html"]).lang == "en"
    assert ada["Content-Language"] == "en"

    # The preview's frame shows the same document, its links opening in a new tab.
    frame = agent_client.get(
        f"/staff/campaigns/{campaign.id}/preview/html", query_string={"contact": lena.public_id}
    )
    assert NEW_TAB_BASE in frame.text
    document = read_document(frame.text.replace(NEW_TAB_BASE, "", 1))
    assert (document.lang, document.title) == ("de", subject)
    assert "<p>Hello Lena</p>" in frame.text and "Beispiel GmbH" in frame.text


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
        # Where and what, in plain words: not Jinja's or Python's own ("division by zero").
        ("text_body", "Hello\n{% if %}x{% endif %}", "line 2: a {{ … }} or {% … %} is incomplete"),
        ("text_body", "Hello\n\n{{ 1 / 0 }}", "the template cannot be rendered: line 3 fails"),
        ("html_body", "<p>{{ first_name.x.y }}</p>", "line 1 uses a value that is not there"),
        ("text_body", "Hello {{ password }}", "unknown placeholder 'password'"),
        ("html_body", "{{ first_name.__class__.__mro__ }}", "cannot be rendered"),
        # Fine with sample values, not for a contact who gave no first name.
        ("text_body", "{{ 10 // first_name|length }}", "whose values are empty"),
        ("html_body", "<p>{{ 10 // region|length }}</p>", "whose values are empty"),
        # Not one of the errors a template "usually" raises: refused all the same, not a 500.
        ("text_body", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "cannot be rendered"),
        # A template that would take the machine's memory or time (portal/sandbox.py).
        ("text_body", "{{ 'a' * 10**9 }}", "would be larger than 524,288 characters"),
        ("html_body", "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}"
                      "{% endfor %}", "more than 100,000 steps"),
        # A stale or made-up form: no such list, or no list id at all.
        ("list_id", "999999", "Choose one of the offered values."),
        ("list_id", "newsletter", "Choose one of the offered values."),
        # PostgreSQL cannot store it (the database refuses it on SQLite too): a 400 page, not
        # a message, before this check (found by tests/test_fuzz_staff_forms.py).
        ("subject", "Hello\x00", "without line breaks"),
        ("text_body", "Hello\x00 there", "invisible NUL character"),
        ("html_body", "<p>Hello\x00</p>", "invisible NUL character"),
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


def test_every_wrong_field_is_said_beside_it_in_one_answer(agent_client, newsletter):
    form = agent_client.get("/staff/campaigns/new")
    answer = agent_client.post("/staff/campaigns/new", data={
        "csrf_token": csrf_token(form.text),
        "subject": "Hello\r\nBcc: everyone@example.test",
        "list_id": newsletter.id,
        "text_body": "Hello {{ first_name",
        "html_body": "<p>{{ 'a' * 10**9 }}</p>",
        "audience-combine": "all",
    })
    assert answer.status_code == 200
    errors = {
        field: unescape(message)
        for field, message in re.findall(r'<p class="error" id="(\w+)-error">([^<]*)</p>',
                                         answer.text)
    }
    assert set(errors) == {"subject", "text_body", "html_body"}
    assert "without line breaks" in errors["subject"]
    assert errors["text_body"].startswith("line 1")
    assert "would be larger than 524,288 characters" in errors["html_body"]
    # What was typed stays in the form, and nothing is saved.
    assert "Hello {{ first_name</textarea>" in unescape(answer.text)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(campaigns.Campaign)) == 0


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


# A send job that fails (issue 5, faults): the page says so, and staff resume it.


def send_from_the_back_office(agent_client, campaign) -> str:
    url = f"/staff/campaigns/{campaign.id}"
    confirm = agent_client.get(url + "/send")
    assert agent_client.post(
        url + "/send", data={"csrf_token": csrf_token(confirm.text)}
    ).status_code == 303
    return url


def press_resume(agent_client, url):
    """Press the page's Resume sending button; return the page it leads to."""
    page = agent_client.get(url)
    answer = agent_client.post(url + "/resume", data={"csrf_token": csrf_token(page.text)})
    assert answer.status_code == 303 and answer.headers["Location"].endswith(url)
    return agent_client.get(url)


def test_a_failed_send_job_is_resumed_from_the_campaign_page_without_a_second_copy(
    agent_client, newsletter, smtp, monkeypatch
):
    import psycopg

    monkeypatch.setattr(sending, "CHUNK", 2)  # seven recipients: four job items
    people = [add(f"r{number}@example.test", OptIn.DOUBLE, newsletter) for number in range(7)]
    db.session.commit()
    campaign = draft(newsletter)
    url = send_from_the_back_office(agent_client, campaign)

    # The database connection drops while the third chunk is being queued. Its error quotes
    # the statement's values, as a real one does: a recipient's address.
    looked_up = []
    real = suppression.suppressed_among

    def drops_on_the_third_chunk(addresses):
        looked_up.append(addresses)
        if len(looked_up) == 3:
            raise sa.exc.OperationalError(
                "SELECT digest FROM suppressions WHERE digest IN (%(d)s)",
                {"d": addresses[0]},
                psycopg.OperationalError("server closed the connection unexpectedly"),
            )
        return real(addresses)

    monkeypatch.setattr(suppression, "suppressed_among", drops_on_the_third_chunk)
    deliver_all()
    assert recipients(smtp) == [person.email for person in people[:4]]
    db.session.refresh(campaign)
    assert campaign.status == "sending" and campaign.job.status == "failed"

    page = agent_client.get(url)
    error = re.search(r'<p class="error">([^<]*)</p>', page.text)
    assert error and error.group(1) == (
        "Queuing the messages stopped on an error: the database failed or could not be reached "
        "(OperationalError); the server log has the details."
    )
    assert "r4@example.test" not in page.text and "SELECT" not in page.text
    assert "Traceback" not in page.text
    assert 'action="' + url + '/resume"' in page.text and "Resume sending" in page.text
    assert "hx-trigger" not in page.text  # the form stays put: nothing polls it away

    resumed = press_resume(agent_client, url)
    assert "The campaign is being sent" in resumed.text
    assert "Resume sending" not in resumed.text and "hx-trigger" in resumed.text
    deliver_all()
    # Everyone exactly once: the four sent before the failure got no second copy.
    assert recipients(smtp) == sorted(person.email for person in people)
    assert outbox_rows() == 7
    db.session.refresh(campaign)
    assert campaign.status == "sent" and campaign.job.status == "done"
    assert campaign.job.done == 4 and "already queued" not in campaign.job.outcomes
    page = agent_client.get(url)
    assert re.search(r"Sent: <strong>7</strong>", page.text)
    assert "Resume sending" not in page.text and 'class="error"' not in page.text

    # Sent: pressing an old Resume button again changes nothing.
    again = agent_client.post(url + "/resume", data={"csrf_token": csrf_token(page.text)})
    assert again.status_code == 303
    assert "there is nothing to resume" in agent_client.get(url).text
    assert db.session.get(jobs.Job, campaign.job_id).status == "done"
    deliver_all()
    assert len(smtp.messages) == 7


def test_a_send_stopped_by_its_audience_rule_resumes_once_the_rule_holds_again(
    agent_client, regions, newsletter, smtp, monkeypatch
):
    # No fault injected: the field the rule reads is marked sensitive while it is sending.
    monkeypatch.setattr(sending, "CHUNK", 1)
    campaign = draft(newsletter, audience_rule={"field": "region", "op": "equals", "value": "EU"})
    url = send_from_the_back_office(agent_client, campaign)
    region = contacts.field_definition("region")

    def mark_sensitive(_job):
        region.sensitive = True
        db.session.commit()

    jobs.run(jobs.claim(campaign.job_id), on_progress=mark_sensitive)
    outbox.work(once=True)
    assert recipients(smtp) == ["eu@example.test"]
    page = agent_client.get(url)
    assert ("Queuing the messages stopped on an error: a rule it uses no longer holds: field "
            "&#39;region&#39; is sensitive: rules cannot use sensitive fields; fix the rule, then "
            "resume" in page.text)

    # Resuming now would fail again at once: refused, with the reason.
    refused = press_resume(agent_client, url)
    assert "Sending cannot resume: the audience rule no longer holds" in refused.text
    assert "rules cannot use sensitive fields" in refused.text
    assert db.session.get(jobs.Job, campaign.job_id).status == "failed"

    region.sensitive = False
    db.session.commit()
    press_resume(agent_client, url)
    deliver_all()
    assert recipients(smtp) == ["eu2@example.test", "eu@example.test"]
    db.session.refresh(campaign)
    assert campaign.status == "sent"


def test_only_a_failed_send_can_be_resumed_and_only_by_a_signed_in_form(
    app, agent_client, audience, newsletter, smtp
):
    campaign = draft(newsletter)
    url = f"/staff/campaigns/{campaign.id}"
    page = agent_client.get(url)
    assert "Resume sending" not in page.text
    token = csrf_token(page.text)
    # A draft: nothing to resume, and nothing sent.
    answer = agent_client.post(url + "/resume", data={"csrf_token": token})
    assert answer.status_code == 303
    assert "there is nothing to resume" in agent_client.get(url).text
    assert db.session.scalar(sa.select(sa.func.count()).select_from(jobs.Job)) == 0

    # Sending and running: nothing to resume either.
    send_from_the_back_office(agent_client, campaign)
    agent_client.post(url + "/resume", data={"csrf_token": token})
    assert "there is nothing to resume" in agent_client.get(url).text
    assert db.session.get(jobs.Job, campaign.job_id).status == "queued"

    # Failed: no CSRF token, or nobody signed in, changes nothing.
    job = db.session.get(jobs.Job, campaign.job_id)
    job.status, job.error = "failed", jobs.describe(ZeroDivisionError())
    db.session.commit()
    assert agent_client.post(url + "/resume").status_code == 400
    # Someone else's token is no token without its session; a signed-out browser is sent away.
    stranger = app.test_client()
    stranger.environ_base.update(agent_client.environ_base)  # HTTPS: the cookie is Secure
    assert stranger.post(url + "/resume", data={"csrf_token": token}).status_code == 400
    own_token = csrf_token(stranger.get("/staff/sign-in").text)
    answer = stranger.post(url + "/resume", data={"csrf_token": own_token})
    assert answer.status_code in (302, 303) and "/staff/sign-in" in answer.headers["Location"]
    assert agent_client.get(url + "/resume").status_code == 405
    assert db.session.get(jobs.Job, campaign.job_id).status == "failed"
    assert agent_client.post("/staff/campaigns/2147483647/resume",
                             data={"csrf_token": token}).status_code == 404
    deliver_all()
    assert smtp.messages == []


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
    assert re.search(r"Skipped by the send gate: <strong>1</strong>", page.text)
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


# One contact's values break the template (issue 5, R4): that contact fails, the rest go out.

#: Fine with the save-time samples ("sample", and empty values), fails for a three-letter name.
FRAGILE = "Hello {{ first_name }}, {{ 10 // (first_name|length - 3) }} news.\n"


@pytest.fixture
def fragile(newsletter):
    """Three on the list; Ada's name breaks FRAGILE."""
    people = {
        name: add(f"{name.lower()}@example.test", OptIn.DOUBLE, newsletter, first_name=name)
        for name in ("Grace", "Ada", "Linus")
    }
    db.session.commit()
    return people


def test_a_contact_whose_values_break_the_template_fails_alone_and_the_campaign_ends(
    agent_client, fragile, newsletter, smtp, caplog, monkeypatch
):
    monkeypatch.setattr(sending, "CHUNK", 1)  # Ada's chunk is one of three job items
    caplog.set_level("WARNING", logger="portal.campaigns")
    campaign = draft(newsletter, text_body=FRAGILE, html_body="")
    job = campaigns.send(campaign, author="test")
    db.session.commit()
    deliver_all()

    assert recipients(smtp) == ["grace@example.test", "linus@example.test"]
    assert db.session.get(jobs.Job, job.id).status == "done"
    db.session.refresh(campaign)
    assert campaign.status == "sent"
    page = agent_client.get(f"/staff/campaigns/{campaign.id}")
    assert re.search(r"Sent: <strong>2</strong>", page.text)
    assert re.search(r"Failed: <strong>1</strong>", page.text)
    assert "the message could not be rendered with the contact's values: 1" in page.text
    assert "hx-trigger" not in page.text  # finished: nothing left to poll for
    # The log says which contact by id, never by address or name.
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert f"contact {fragile['Ada'].id} could not be rendered: ZeroDivisionError" in logged
    assert "ada@example.test" not in logged and "Ada" not in logged

    # A job walking the audience again neither retries Ada nor sends anyone a second copy.
    job = db.session.get(jobs.Job, job.id)
    job.status, job.cursor = "queued", 0
    db.session.commit()
    deliver_all()
    assert len(smtp.messages) == 2
    assert outbox_rows() == 3
    assert campaigns.counts(campaign)["failed"] == 1


#: Fine with the save-time samples, but for a three-letter name it would build gigabytes.
GREEDY = "Hi {{ first_name }}{% if first_name|length == 3 %}{{ first_name * 10**9 }}{% endif %}\n"


def test_a_contact_for_whom_the_template_would_take_the_machine_fails_alone(
    app, fragile, newsletter, smtp, caplog, monkeypatch
):
    monkeypatch.setattr(sending, "CHUNK", 1)
    caplog.set_level("WARNING", logger="portal.campaigns")
    campaign = draft(newsletter, text_body=GREEDY, html_body="")
    campaigns.send(campaign, author="test")
    db.session.commit()
    deliver_all()

    assert recipients(smtp) == ["grace@example.test", "linus@example.test"]
    db.session.refresh(campaign)
    assert campaign.status == "sent"
    assert campaigns.counts(campaign)["failed"] == 1
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert f"contact {fragile['Ada'].id} could not be rendered: TemplateLimit" in logged


def test_an_address_smtp_cannot_carry_fails_alone_and_its_reason_does_not_quote_it(
    agent_client, newsletter, smtp, caplog
):
    add("grace@example.test", OptIn.DOUBLE, newsletter)
    jose = add("jose@example.test", OptIn.DOUBLE, newsletter)
    # No SMTPUTF8, so it cannot be written: an address on file from before such were refused
    # where they are typed (contacts.normalise_email).
    db.session.execute(sa.update(Contact).where(Contact.id == jose.id)
                       .values(email="jösé@example.test"))
    db.session.commit()
    campaign = draft(newsletter)
    campaigns.send(campaign, author="test")
    db.session.commit()
    deliver_all()

    assert recipients(smtp) == ["grace@example.test"]
    db.session.refresh(campaign)
    assert campaign.status == "sent"
    [failed] = db.session.scalars(
        sa.select(outbox.OutboxMessage).where(outbox.OutboxMessage.status == "failed")
    ).all()
    assert failed.reason == sending.NOT_QUEUED
    page = agent_client.get(f"/staff/campaigns/{campaign.id}")
    assert "the message could not be written for the contact's address: 1" in page.text
    assert "jösé" not in page.text and "jösé" not in caplog.text


def test_the_preview_says_when_the_message_cannot_be_rendered_for_a_contact(
    agent_client, fragile, newsletter
):
    campaign = draft(newsletter, text_body=FRAGILE, html_body="<p>{{ first_name }}</p>")
    url = f"/staff/campaigns/{campaign.id}/preview"
    broken = agent_client.get(url, query_string={"contact": "ada@example.test"})
    assert broken.status_code == 200
    error = re.search(r'<p class="error" id="contact-error">([^<]*)</p>', broken.text)
    assert error and "cannot be rendered for this contact" in error.group(1)
    assert error.group(1).endswith(": line 1 fails")  # where, not Python's own words
    assert "division" not in error.group(1)
    assert 'aria-invalid="true"' in broken.text
    assert "<iframe" not in broken.text
    frame = agent_client.get(url + "/html", query_string={"contact": fragile["Ada"].public_id})
    assert frame.status_code == 404

    fine = agent_client.get(url, query_string={"contact": "grace@example.test"})
    assert "Hello Grace, 5 news." in fine.text and "contact-error" not in fine.text


def test_a_draft_saved_before_the_empty_values_check_is_refused_at_send(
    agent_client, fragile, newsletter
):
    campaign = draft(newsletter)
    # As an older version saved it, without the trial render with empty values.
    campaign.text_body = "{{ 10 // first_name|length }}"
    db.session.commit()
    url = f"/staff/campaigns/{campaign.id}/send"
    answer = agent_client.post(url, data={"csrf_token": csrf_token(agent_client.get(url).text)})
    assert answer.status_code == 200
    assert "whose values are empty" in answer.text
    assert db.session.scalar(sa.select(sa.func.count()).select_from(jobs.Job)) == 0
    db.session.refresh(campaign)
    assert campaign.status == "draft"


# The audience rule and who the audience leaves out (issue 5, M4).


def rule_fields(field="region", op="equals", value="EU", row=0) -> dict:
    """The rule editor's form fields for one condition."""
    prefix = f"audience-rows-{row}-"
    return {"audience-combine": "all", prefix + "field": field, prefix + "op": op,
            prefix + "value": value}


def new_campaign(agent_client, newsletter, headers=None, **fields):
    form = agent_client.get("/staff/campaigns/new")
    data = {
        "csrf_token": csrf_token(form.text),
        "subject": "Monthly news",
        "list_id": newsletter.id,
        "text_body": TEXT,
        "html_body": HTML,
        **fields,
    }
    return agent_client.post("/staff/campaigns/new", data=data, headers=headers or {})


@pytest.fixture
def regions(newsletter):
    """Members of the list in Europe and elsewhere."""
    people = {
        "eu": add("eu@example.test", OptIn.DOUBLE, newsletter, region="EU"),
        "eu2": add("eu2@example.test", OptIn.DOUBLE, newsletter, region=" eu "),
        "us": add("us@example.test", OptIn.DOUBLE, newsletter, region="US"),
        "nowhere": add("nowhere@example.test", OptIn.DOUBLE, newsletter),
    }
    db.session.commit()
    return people


def test_an_audience_rule_decides_who_on_the_list_receives_it(
    agent_client, regions, newsletter, smtp
):
    created = new_campaign(agent_client, newsletter, **rule_fields("region", "equals", "EU"))
    assert created.status_code == 303
    campaign = db.session.scalar(sa.select(campaigns.Campaign))
    assert campaign.audience_rule == {"field": "region", "op": "equals", "value": "EU"}
    page = agent_client.get(created.headers["Location"])
    assert "region is EU" in page.text
    assert "2 contacts, under the campaign policy in force" in page.text
    assert "the contact does not match the campaign's audience rule: 2" in page.text

    # The rule comes back in the editor's rows.
    edit = agent_client.get(f"/staff/campaigns/{campaign.id}/edit")
    assert '<option selected value="region">' in edit.text
    assert 'name="audience-rows-0-value" type="text" value="EU"' in edit.text

    confirm = agent_client.get(f"/staff/campaigns/{campaign.id}/send")
    assert "the 2 members" in confirm.text and "audience rule (region is EU)" in confirm.text
    agent_client.post(
        f"/staff/campaigns/{campaign.id}/send", data={"csrf_token": csrf_token(confirm.text)}
    )
    deliver_all()
    assert recipients(smtp) == ["eu2@example.test", "eu@example.test"]


def test_an_edit_can_widen_the_audience_again(agent_client, regions, newsletter, smtp):
    campaign = draft(newsletter)
    campaigns.update(
        campaign, subject=campaign.subject, text_body=TEXT, html_body=HTML,
        list_id=newsletter.id, audience_rule={"field": "region", "op": "not_empty"},
    )
    db.session.commit()
    assert campaigns.audience_count(newsletter.id, rule=campaign.audience_rule) == 3
    url = f"/staff/campaigns/{campaign.id}/edit"
    form = agent_client.get(url)
    data = {"csrf_token": csrf_token(form.text), "subject": "Monthly news",
            "list_id": newsletter.id, "text_body": TEXT, "html_body": HTML,
            **rule_fields(field="")}  # the row emptied: no condition, everyone
    assert agent_client.post(url, data=data).status_code == 303
    db.session.refresh(campaign)
    assert campaign.audience_rule is None
    campaigns.send(campaign, author="test")
    db.session.commit()
    deliver_all()
    assert len(recipients(smtp)) == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (rule_fields("region", "equals", ""), "needs a non-empty value"),
        (rule_fields("regoin", "equals", "EU"), "unknown field &#39;regoin&#39; (did you mean"),
        (rule_fields("card_number", "equals", "4111"), "rules cannot use sensitive fields"),
        (rule_fields("opt_in_status", "equals", "maybe"), "is not one of"),
    ],
)
def test_a_bad_audience_rule_is_refused_next_to_its_row(
    agent_client, regions, newsletter, fields, message
):
    contacts.define_field("card_number", "Card number", sensitive=True)
    db.session.commit()
    answer = new_campaign(agent_client, newsletter, **fields)
    assert answer.status_code == 200
    error = re.search(r'<p class="error" id="audience-rows-0-value-error">([^<]*)</p>', answer.text)
    assert error and message in error.group(1)
    assert 'aria-describedby="audience-rows-0-value-error"' in answer.text
    assert db.session.scalar(sa.select(sa.func.count()).select_from(campaigns.Campaign)) == 0


def test_a_rule_the_editor_cannot_express_is_refused_by_the_domain_beside_the_editor(
    agent_client, regions, newsletter
):
    # A hand-made "nested" value is checked by the rules module too, and its error shown.
    answer = new_campaign(agent_client, newsletter, **{"audience-nested": '{"field": 5}'})
    assert answer.status_code == 200
    assert "a condition names a field as text" in answer.text
    assert db.session.scalar(sa.select(sa.func.count()).select_from(campaigns.Campaign)) == 0
    with pytest.raises(campaigns.CampaignError) as refused:
        campaigns.create(subject="Hi", text_body="Hi", html_body="", list_id=newsletter.id,
                         author="test", audience_rule={"any": []})
    assert refused.value.field == "audience"


def test_count_shows_who_would_receive_it_with_htmx_and_without(
    agent_client, regions, newsletter
):
    rule = rule_fields("region", "in", "EU, US")
    htmx = new_campaign(agent_client, newsletter, count="audience", headers={"HX-Request": "true"},
                        **rule)
    assert htmx.status_code == 200
    assert htmx.text == "3 contacts match this rule."  # the text of the output, swapped into it
    plain = new_campaign(agent_client, newsletter, count="audience", **rule)
    assert "<form" in plain.text and "3 contacts match this rule." in plain.text
    bad = new_campaign(agent_client, newsletter, count="audience",
                       **rule_fields("region", "equals", ""))
    assert "Not counted: field &#39;region&#39;: equals needs a non-empty value" in bad.text
    # Counting saves nothing.
    assert db.session.scalar(sa.select(sa.func.count()).select_from(campaigns.Campaign)) == 0


@pytest.fixture
def members(newsletter):
    """One member of the list for each reason to leave them out, and one who receives it."""
    people = {
        "eu": add("eu@example.test", OptIn.DOUBLE, newsletter, region="EU"),
        "us": add("us@example.test", OptIn.DOUBLE, newsletter, region="US"),
        "single": add("single@example.test", OptIn.SINGLE_USER, newsletter, region="EU"),
        "optout": add("optout@example.test", OptIn.OPTOUT_CONTACT, newsletter, region="EU"),
        "stopped": add("stopped@example.test", OptIn.DOUBLE, newsletter, region="EU"),
        "asked": add("asked@example.test", OptIn.DOUBLE, newsletter, region="EU"),
        "erased": add("erased@example.test", OptIn.DOUBLE, newsletter, region="EU"),
        "noaddress": add("noaddress@example.test", OptIn.DOUBLE, newsletter, region="EU"),
        # Not members: neither counted in the audience nor as left out.
        "outside": add("outside@example.test", OptIn.DOUBLE, None, region="EU"),
        "left": add("left@example.test", OptIn.DOUBLE, newsletter, region="EU"),
    }
    contacts.stop_processing(people["stopped"], method="staff", actor="test")
    contacts.request_erasure(people["asked"], method="staff", actor="test")
    erasure.erase(people["erased"], actor="test")
    people["noaddress"].email = None
    lists.set_subscription(people["left"], newsletter, False, method="staff", actor="test")
    db.session.commit()
    return people


LEFT_OUT = {
    "the contact's personal data was erased",
    "the contact asked for erasure",
    "the contact stopped the processing of their data",
    "the contact has no email address",
    "the contact opted out of email",
    "the campaign policy does not admit the contact's opt-in status",
    "the contact does not match the campaign's audience rule",
}


def left_out(html: str) -> dict[str, int]:
    items = re.search(r'<ul class="left-out">(.*?)</ul>', html, re.S).group(1)
    return {label: int(count) for label, count in re.findall(r"<li>([^<]*): (\d+)</li>", items)}


def test_the_members_left_out_are_counted_by_reason_and_kept_from_when_sending_began(
    agent_client, members, newsletter, smtp
):
    campaign = draft(newsletter)
    campaign.audience_rule = {"field": "region", "op": "equals", "value": "EU"}
    db.session.commit()
    url = f"/staff/campaigns/{campaign.id}"
    page = agent_client.get(url)
    assert "1 contacts, under the campaign policy in force" in page.text
    assert "7 members of the list:" in page.text
    assert left_out(page.text) == dict.fromkeys(LEFT_OUT, 1)
    confirm = agent_client.get(url + "/send")
    assert left_out(confirm.text) == dict.fromkeys(LEFT_OUT, 1)

    agent_client.post(url + "/send", data={"csrf_token": csrf_token(confirm.text)})
    deliver_all()
    # (The erasure's receipt went out too, to the address it had.)
    received = [m.rcpt_tos for m in smtp.messages if m.message["Subject"] == "Monthly news"]
    assert received == [["eu@example.test"]]

    # Later changes do not rewrite what happened: the counts are those of when it began.
    us = db.session.get(contacts.Contact, members["us"].id)
    us.region = "EU"
    db.session.commit()
    page = agent_client.get(url)
    assert "When sending began, the audience was 1 contacts." in page.text
    assert re.search(r"Left out of the audience when sending began: <strong>7</strong>", page.text)
    assert left_out(page.text) == dict.fromkeys(LEFT_OUT, 1)
    # Beside them, the gate's own refusals at hand-off: none here.
    assert re.search(r"Skipped by the send gate: <strong>0</strong>", page.text)
    fragment = agent_client.get(url, headers={"HX-Request": "true"})
    assert left_out(fragment.text) == dict.fromkeys(LEFT_OUT, 1)


@pytest.mark.parametrize("policy", sorted(gate.POLICY_STATUSES))
@pytest.mark.parametrize("rule", [None, {"field": "region", "op": "equals", "value": "EU"}])
def test_the_breakdown_and_the_audience_query_agree(app, members, newsletter, policy, rule):
    breakdown = campaigns.audience_breakdown(newsletter.id, policy, rule)
    assert breakdown["audience"] == campaigns.audience_count(newsletter.id, policy, rule)
    subscribed = db.session.scalar(
        sa.select(sa.func.count()).select_from(lists.Subscription).where(
            lists.Subscription.list_id == newsletter.id,
            lists.Subscription.status == "subscribed",
        )
    )
    assert breakdown["audience"] + sum(breakdown["left_out"].values()) == subscribed


def test_a_rule_that_no_longer_holds_is_said_and_stops_the_send(agent_client, regions, newsletter):
    stage = contacts.define_field("sales_stage", "Sales stage")
    db.session.commit()
    campaign = draft(newsletter, audience_rule={"field": "sales_stage", "op": "not_empty"})
    stage.sensitive = True  # since then, the field holds secrets: rules may not read it
    db.session.commit()
    url = f"/staff/campaigns/{campaign.id}"
    page = agent_client.get(url)
    assert page.status_code == 200
    assert "The audience rule no longer holds" in page.text and "sensitive" in page.text
    confirm = agent_client.get(url + "/send")
    assert confirm.status_code == 200 and "The audience rule no longer holds" in confirm.text
    sent = agent_client.post(url + "/send", data={"csrf_token": csrf_token(confirm.text)})
    assert sent.status_code == 200 and "rules cannot use sensitive fields" in sent.text
    assert db.session.scalar(sa.select(sa.func.count()).select_from(jobs.Job)) == 0


# The status and the banner follow the sending as the counts do (the newcomer's walk: "Sent: 7,
# job done" under "Status: sending" and "The campaign is being sent").


def status_and_banner(text: str) -> tuple[str, str]:
    status = re.search(r'<dd id="campaign-status"[^>]*>([^<]*)</dd>', text)
    banner = re.search(r'<div id="campaign-state"[^>]*>(.*?)</div>', text, re.S)
    return status.group(1), " ".join(re.sub(r"<[^>]+>", " ", banner.group(1)).split())


def test_the_polled_counts_bring_the_status_and_banner_along(
    agent_client, audience, newsletter, smtp
):
    campaign = draft(newsletter)
    url = send_from_the_back_office(agent_client, campaign)
    page = agent_client.get(url)
    assert status_and_banner(page.text) == (
        "sending", "The campaign is being sent. This page shows its progress. Sent 0 of 3."
    )
    assert "hx-swap-oob" not in page.text  # in place on the page itself

    deliver_all()
    fragment = agent_client.get(url, headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<section id="campaign-counts"')
    assert re.search(r"Sent: <strong>3</strong>", fragment.text)
    assert status_and_banner(fragment.text) == ("sent", "The campaign is sent. Sent 3 of 3.")
    assert 'id="campaign-status" class="status" hx-swap-oob="true"' in fragment.text
    assert 'id="campaign-state" class="flashes" role="status" hx-swap-oob="innerHTML"' in (
        fragment.text
    )
    assert "hx-trigger" not in fragment.text and "being sent" not in fragment.text

    # Without JavaScript a reload says the same.
    page = agent_client.get(url)
    assert status_and_banner(page.text) == ("sent", "The campaign is sent. Sent 3 of 3.")
    assert "being sent" not in page.text and "hx-trigger" not in page.text


def test_a_stalled_send_says_so_above_and_keeps_its_resume_form(
    agent_client, newsletter, smtp, monkeypatch
):
    add("r1@example.test", OptIn.DOUBLE, newsletter)
    db.session.commit()
    campaign = draft(newsletter)
    url = send_from_the_back_office(agent_client, campaign)

    def fails(addresses):
        raise ZeroDivisionError

    monkeypatch.setattr(suppression, "suppressed_among", fails)
    jobs.work(once=True)
    monkeypatch.undo()
    for answer in (agent_client.get(url, headers={"HX-Request": "true"}), agent_client.get(url)):
        status, banner = status_and_banner(answer.text)
        assert status == "sending" and banner.startswith("Sending stopped on an error.")
        assert "Resume sending" in answer.text and "hx-trigger" not in answer.text
    resumed = press_resume(agent_client, url)
    assert status_and_banner(resumed.text)[1] == (
        "The campaign is being sent. This page shows its progress. Sent 0 of 1."
    )
    deliver_all()
    assert recipients(smtp) == ["r1@example.test"]
    assert status_and_banner(agent_client.get(url).text) == (
        "sent", "The campaign is sent. Sent 1 of 1."
    )


def test_a_draft_has_no_banner(agent_client, audience, newsletter):
    campaign = draft(newsletter)
    page = agent_client.get(f"/staff/campaigns/{campaign.id}")
    assert status_and_banner(page.text) == ("draft", "")


# While a campaign is sent its counts are polled every 2 s. The section htmx replaces is no live
# region (replaced whole, it is not announced reliably, or reads every count again) and holds no
# link that focus could be on; the banner, a status that stays in place, says how far it got.


def counts_section(text: str) -> str:
    return re.search(r'<section id="campaign-counts".*?</section>', text, re.S).group(0)


def test_the_polled_counts_keep_focus_and_the_banner_says_how_many_are_sent(
    agent_client, audience, newsletter, smtp
):
    url = send_from_the_back_office(agent_client, draft(newsletter))
    page = agent_client.get(url).text
    counts = counts_section(page)
    assert 'hx-trigger="every 2s"' in counts
    assert "aria-live" not in counts
    assert "Refresh to see the latest counts" in page.split(counts)[1]  # after it, not in it
    assert status_and_banner(page)[1].endswith("Sent 0 of 3.")

    deliver_all()
    fragment = agent_client.get(url, headers={"HX-Request": "true"}).text
    assert "aria-live" not in fragment and "Refresh to see" not in fragment
    assert 'id="campaign-state" class="flashes" role="status" hx-swap-oob="innerHTML"' in fragment
    assert status_and_banner(fragment)[1].endswith("Sent 3 of 3.")


def test_two_errors_on_a_campaign_field_are_read_together(agent_client, newsletter, monkeypatch):
    def also_refused(form, field):
        raise ValidationError("Say it in fewer words.")

    monkeypatch.setattr(CampaignForm, "validate_subject", also_refused, raising=False)
    answer = new_campaign(agent_client, newsletter, subject="x" * 201)
    assert answer.status_code == 200
    description = field_description(answer.text, "subject")
    assert "cannot be longer than 200 characters" in description
    assert "Say it in fewer words." in description
