"""Web-form sign-ups (M2, M5): the public form, its answer, the double opt-in, the staff page."""

import re
import secrets
import threading

import pytest
import sqlalchemy as sa
from pg_locks import waiting_for_a_lock
from test_backoffice_auth import PASSWORD
from test_backoffice_auth import csrf_token
from test_backoffice_auth import sign_in
from test_mailbox import demo_app  # noqa: F401 (a fixture)
from test_mailbox import signed_in_client

from portal import campaigns
from portal import contacts
from portal import doi
from portal import jobs
from portal import ledger
from portal import lists
from portal import mailbox
from portal import outbox
from portal import staff
from portal import suppression
from portal import unsubscribe
from portal import webforms
from portal.contacts import OptIn
from portal.db import db

DOI_SUBJECT = "Please confirm you want our email"


@pytest.fixture
def news(app):
    mailing_list = lists.create_list("news", "News", "Once a month.")
    lists.create_list("offers", "Offers")
    lists.create_list("staff-only", "Staff only", public=False)
    db.session.commit()
    return mailing_list


@pytest.fixture
def visitor(app):
    """A browser on another site's page: no cookie from the portal, no CSRF token."""
    return app.test_client(use_cookies=False)


def sign_up(visitor, address, *, slug="news", marketing=True, **extra):
    """Post the form, then have the outbox worker do the sign-up it queued."""
    form = {"email": address, **extra}
    if marketing:
        form["marketing"] = "yes"
    answer = visitor.post(f"/f/{slug}", data=form)
    webforms.answer_queued()
    return answer


def contact(address):
    found = contacts.find_by_email(address)
    if found is not None:
        db.session.refresh(found)
    return found


def subscribed(person, slug) -> bool:
    row = db.session.scalar(
        sa.select(lists.Subscription)
        .join(lists.MailingList)
        .where(lists.Subscription.contact_id == person.id, lists.MailingList.slug == slug)
    )
    return row is not None and row.status == "subscribed"


def link_in(smtp, address, subject, prefix) -> str:
    """Deliver the outbox; return the path of the link under prefix in the mail of subject."""
    outbox.work(once=True)
    [received] = [m for m in smtp.to(address) if m.message["Subject"] == subject]
    text = received.message.get_body(preferencelist=("plain",)).get_content()
    return re.search(rf"https://prefs\.example\.test({prefix}/\S+)", text).group(1)


def doi_link(smtp, address) -> str:
    return link_in(smtp, address, DOI_SUBJECT, "/d")


def confirm(app, path):
    browser = app.test_client()
    browser.environ_base["HTTP_REFERER"] = "https://localhost/"
    page = browser.get(path)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)
    return browser.post(action, data={"csrf_token": token})


def test_a_newcomer_signs_up_confirms_and_is_double_opt_in(app, news, visitor, smtp):
    answer = sign_up(visitor, "New.Comer@Example.com", first_name="Nia", list=["offers"])
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/signup/sent"
    assert answer.headers.getlist("Set-Cookie") == []
    assert "Check your inbox" in visitor.get("/signup/sent").text
    person = contact("new.comer@example.com")
    assert (person.first_name, person.opt_in_status) == ("Nia", OptIn.SINGLE_WEBFORM)
    assert subscribed(person, "news") and subscribed(person, "offers")
    assert confirm(app, doi_link(smtp, "new.comer@example.com")).status_code == 200
    assert contact("new.comer@example.com").opt_in_status == OptIn.DOUBLE


def test_without_the_box_ticked_the_lead_joins_but_gets_no_mail(app, news, visitor, smtp):
    assert sign_up(visitor, "quiet@example.com", marketing=False).status_code == 303
    person = contact("quiet@example.com")
    assert person.opt_in_status == OptIn.NONE
    assert subscribed(person, "news")
    outbox.work(once=True)
    assert smtp.to("quiet@example.com") == []


def test_the_answer_is_the_same_for_known_unknown_suppressed_trapped_and_limited(
    app, news, visitor
):
    contacts.add_contact("known@example.com", method="cli", actor="t")
    suppression.suppress("gone@example.com", "erased")
    db.session.commit()
    answers = [
        sign_up(visitor, address)
        for address in ("known@example.com", "unknown@example.com", "gone@example.com")
    ]
    answers.append(sign_up(visitor, "bot@example.com", website="http://spam.example"))
    answers += [sign_up(visitor, "again@example.com") for _ in range(7)]  # past the address limit

    def essence(response):
        return (
            response.status_code,
            response.headers["Location"],
            response.get_data(),
            response.headers.getlist("Set-Cookie"),
        )

    assert len({repr(essence(answer)) for answer in answers}) == 1
    assert contact("gone@example.com") is None  # the suppression list is respected
    assert contact("bot@example.com") is None  # the honeypot caught it
    queued = [m for m in outbox.recent() if m.subject == DOI_SUBJECT]
    assert sorted(m.recipient for m in queued) == [
        "again@example.com",
        "known@example.com",
        "unknown@example.com",
    ]


def test_every_sign_up_request_does_the_same_work_in_the_same_statements(
    app, news, dana, visitor, statements
):
    # A known address would be answered sooner than a new one (no lead to add) if the request
    # did the sign-up: it only queues it, the same way for every address, and the outbox
    # worker does the rest.
    suppression.suppress("gone@example.com", "erased")
    db.session.commit()
    visitor.post("/f/news", data={"email": "warm-up@example.com", "marketing": "yes"})
    shapes = set()
    for address in ["dana@example.com", "new@example.com", "gone@example.com"] + [
            "again@example.com"] * 6:  # the sixth is past the address limit
        statements.clear()
        visitor.post("/f/news", data={"email": address, "marketing": "yes"})
        shapes.add(tuple(re.sub(r"sa_savepoint_\d+", "sp", statement)
                         for statement in statements))
    assert len(shapes) == 1
    assert not any("contacts" in statement.split(" WHERE")[0] for statement in shapes.pop())
    queued = db.session.scalars(sa.select(webforms.QueuedSignup.address)
                                .order_by(webforms.QueuedSignup.id)).all()
    assert queued == (["warm-up@example.com", "dana@example.com", "new@example.com",
                       "gone@example.com"] + ["again@example.com"] * 5 + [None])
    over_the_limit = db.session.scalars(sa.select(webforms.QueuedSignup)
                                        .order_by(webforms.QueuedSignup.id.desc())).first()
    assert (over_the_limit.ip_address, over_the_limit.user_agent) == (None, None)
    assert contact("new@example.com") is None  # not before the worker's pass
    outbox.work(once=True)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(webforms.QueuedSignup)) == 0
    assert contact("new@example.com").opt_in_status == OptIn.SINGLE_WEBFORM
    assert subscribed(contact("warm-up@example.com"), "news")
    assert contact("gone@example.com") is None


def test_a_sign_up_that_fails_is_dropped_and_holds_up_no_mail(
    app, news, visitor, smtp, monkeypatch, caplog
):
    # A fault in one queued sign-up (here made up) must not stop the outbox worker, nor make
    # it try the same row on every pass while the mail behind it waits.
    real_new_lead = webforms._new_lead

    def failing(address, *args):
        if address == "poison@example.com":
            raise RuntimeError(f"cannot add {address}")
        return real_new_lead(address, *args)

    monkeypatch.setattr(webforms, "_new_lead", failing)
    for address in ("poison@example.com", "fine@example.com"):
        visitor.post("/f/news", data={"email": address, "marketing": "yes"})
    outbox.work(once=True)
    assert [m.rcpt_tos for m in smtp.messages] == [["fine@example.com"]]
    assert contact("poison@example.com") is None
    assert db.session.scalar(sa.select(sa.func.count()).select_from(webforms.QueuedSignup)) == 0
    [failure] = [r for r in caplog.records if "failed and is dropped" in r.getMessage()]
    assert "poison@example.com" not in (failure.getMessage() + (failure.exc_text or ""))
    outbox.work(once=True)
    assert len(smtp.messages) == 1


def test_a_backlog_of_queued_sign_ups_is_worked_off_in_one_run(app, news, visitor, smtp):
    # Rows over the limits make no mail; the worker must not sleep between batches of them
    # while a real sign-up waits behind.
    db.session.add_all([webforms.QueuedSignup(address=None, list_ids=[news.id], marketing=True)
                        for _ in range(webforms.BATCH * 2 + 50)])
    db.session.commit()
    visitor.post("/f/news", data={"email": "late@example.com", "marketing": "yes"})
    outbox.work(once=True)
    assert [m.rcpt_tos for m in smtp.messages] == [["late@example.com"]]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(webforms.QueuedSignup)) == 0


def test_the_limit_per_ip_holds_across_addresses(app, news, visitor):
    for number in range(33):
        assert sign_up(visitor, f"person{number}@example.com").status_code == 303
    created = db.session.scalar(
        sa.select(sa.func.count(contacts.Contact.id)).where(contacts.Contact.email.like("person%"))
    )
    assert created == 30


@pytest.mark.parametrize("status", [OptIn.OPTOUT_CONTACT, OptIn.OPTOUT_USER])
def test_an_opted_out_address_changes_nothing_until_the_double_opt_in_is_confirmed(
    app, news, visitor, smtp, status
):
    person = contacts.add_contact("left@example.com", first_name="Lee", method="cli", actor="t")
    contacts.record_opt_in(person, status, method="cli", actor="t")
    db.session.commit()
    assert sign_up(visitor, "left@example.com", first_name="Mallory").status_code == 303
    person = contact("left@example.com")
    assert person.opt_in_status == status
    assert person.first_name == "Lee"  # a form never rewrites a record on file
    assert not subscribed(person, "news")
    link = doi_link(smtp, "left@example.com")  # the double opt-in mail is sent all the same
    assert contact("left@example.com").opt_in_status == status  # opening it changes nothing
    assert confirm(app, link).status_code == 200
    person = contact("left@example.com")
    assert person.opt_in_status == OptIn.DOUBLE
    assert subscribed(person, "news")


def test_an_opted_out_address_without_the_box_changes_nothing_at_all(app, news, visitor, smtp):
    person = contacts.add_contact("left@example.com", method="cli", actor="t")
    contacts.record_opt_in(person, OptIn.OPTOUT_CONTACT, method="cli", actor="t")
    db.session.commit()
    sign_up(visitor, "left@example.com", marketing=False)
    assert not subscribed(contact("left@example.com"), "news")
    outbox.work(once=True)
    assert smtp.to("left@example.com") == []


@pytest.fixture
def dana(news):
    """A contact at Double opt-in, on the news list: campaigns reach her."""
    person = contacts.add_contact("dana@example.com", method="cli", actor="t")
    lists.set_subscription(person, news, True, method="cli", actor="t")
    contacts.record_opt_in(person, OptIn.DOUBLE, method="cli", actor="t")
    db.session.commit()
    return person


def test_a_known_double_opt_in_address_joins_only_once_its_owner_confirms(
    app, dana, visitor, smtp
):
    # Anyone can type an address on file into a form: a contact already at Double opt-in, whom
    # campaigns reach, must not be put on a list by someone else.
    events = ledger_count()
    answer = sign_up(visitor, "dana@example.com", slug="offers", list=["news"])
    assert answer.status_code == 303 and answer.headers["Location"] == "/signup/sent"
    assert not subscribed(contact("dana@example.com"), "offers")
    assert ledger_count() == events  # nothing decided in the contact's name
    link = link_in(smtp, "dana@example.com", "Please confirm your choices", "/c")
    assert not subscribed(contact("dana@example.com"), "offers")  # opening it changes nothing
    assert confirm(app, link).status_code == 200
    person = contact("dana@example.com")
    assert subscribed(person, "offers") and subscribed(person, "news")
    assert person.opt_in_status == OptIn.DOUBLE


def test_a_known_double_opt_in_address_already_on_the_lists_gets_no_mail(
    app, dana, visitor, smtp
):
    assert sign_up(visitor, "dana@example.com").status_code == 303
    outbox.work(once=True)
    assert smtp.to("dana@example.com") == []


@pytest.mark.parametrize("status", [OptIn.NONE, OptIn.SINGLE_USER, OptIn.SINGLE_WEBFORM])
def test_a_known_address_not_yet_double_joins_once_the_double_opt_in_is_confirmed(
    app, news, visitor, smtp, status
):
    person = contacts.add_contact("sam@example.com", first_name="Sam", method="cli", actor="t")
    if status != OptIn.NONE:
        contacts.record_opt_in(person, status, method="cli", actor="t")
    db.session.commit()
    assert sign_up(visitor, "sam@example.com", first_name="Mallory").status_code == 303
    person = contact("sam@example.com")
    assert not subscribed(person, "news")
    assert person.opt_in_status == OptIn.SINGLE_WEBFORM  # M5: the ticked box, as for a lead
    assert person.first_name == "Sam"
    assert confirm(app, doi_link(smtp, "sam@example.com")).status_code == 200
    person = contact("sam@example.com")
    assert subscribed(person, "news") and person.opt_in_status == OptIn.DOUBLE


def test_a_known_address_without_the_box_changes_nothing_and_gets_no_mail(
    app, news, visitor, smtp
):
    person = contacts.add_contact("sam@example.com", method="cli", actor="t")
    db.session.commit()
    events = ledger_count()
    sign_up(visitor, "sam@example.com", marketing=False)
    person = contact("sam@example.com")
    assert not subscribed(person, "news") and person.opt_in_status == OptIn.NONE
    assert ledger_count() == events
    outbox.work(once=True)
    assert smtp.to("sam@example.com") == []


def ledger_count() -> int:
    return db.session.scalar(sa.select(sa.func.count()).select_from(ledger.LedgerEvent))


def test_leaving_a_list_cancels_a_waiting_sign_up_for_it(app, news, visitor, smtp):
    person = contacts.add_contact("left@example.com", method="cli", actor="t")
    lists.set_subscription(person, news, True, method="cli", actor="t")
    contacts.record_opt_in(person, OptIn.OPTOUT_USER, method="cli", actor="t")
    db.session.commit()
    sign_up(visitor, "left@example.com")  # waits for the double opt-in, news among its lists
    link = doi_link(smtp, "left@example.com")
    unsubscribe.unsubscribe(person, news)  # say, a one-click POST from an older mail
    db.session.commit()
    confirm(app, link)
    assert not subscribed(contact("left@example.com"), "news")


@pytest.mark.parametrize("address", ["not an address", "", "a@b", "x" * 250 + "@example.com",
                                     "jörg@example.de"])
def test_a_malformed_address_gets_the_form_back_with_a_message_next_to_the_field(
    app, news, visitor, address
):
    answer = sign_up(visitor, address)
    assert answer.status_code == 200
    assert 'aria-invalid="true" aria-describedby="signup-email-error"' in answer.text
    assert "Enter a valid email address" in answer.text
    assert 'id="signup-marketing" name="marketing" value="yes" checked' in answer.text
    assert outbox.recent() == []


def test_a_name_with_a_line_break_is_refused(app, news, visitor):
    answer = sign_up(visitor, "ok@example.com", first_name="Eve\r\nBcc: x@example.com")
    assert answer.status_code == 200
    assert "Use at most 100 characters, on one line." in answer.text
    assert contact("ok@example.com") is None


@pytest.mark.parametrize(
    "slug, extra", [("nope", []), ("news", ["nope"]), ("staff-only", []), ("news", ["staff-only"])]
)
def test_an_unknown_or_private_list_gets_a_clear_page_and_nothing_is_saved(
    app, news, visitor, slug, extra
):
    answer = sign_up(visitor, "someone@example.com", slug=slug, list=extra)
    assert answer.status_code == 404
    assert "This sign-up form is out of date" in answer.text
    assert 'href="/f/news"' in answer.text  # the way forward
    assert contact("someone@example.com") is None


def test_the_portal_hosts_the_same_form(app, news, client):
    page = client.get("/f/news")
    assert page.status_code == 200
    assert 'action="/f/news"' in page.text
    assert 'name="website"' in page.text and "<p hidden>" in page.text
    assert client.get("/f/staff-only").status_code == 404


def test_staff_copy_a_snippet_that_works_from_another_site(app, news, visitor):
    staff.create_staff("agent@example.com", PASSWORD, "agent")
    db.session.commit()
    browser = app.test_client()
    browser.environ_base.update(
        {"wsgi.url_scheme": "https", "HTTP_REFERER": "https://localhost/staff/"}
    )
    assert browser.get("/staff/forms").status_code in (302, 303)  # sign-in first
    sign_in(browser, "agent@example.com", PASSWORD)
    page = browser.get("/staff/forms")
    assert page.status_code == 200
    assert "Staff only" not in page.text
    snippet = re.search(r'<textarea id="snippet-news"[^>]*>(.*?)</textarea>', page.text, re.S)
    html = snippet.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&#34;", '"')
    assert 'action="https://prefs.example.test/f/news"' in html
    assert "csrf" not in html
    assert re.search(r'<input type="checkbox"[^>]*name="marketing" value="yes">', html)
    names = set(re.findall(r'name="([^"]+)"', html))
    assert names == {"email", "first_name", "marketing", "website"}
    assert sign_up(visitor, "from-snippet@example.com").status_code == 303
    assert contact("from-snippet@example.com") is not None


def test_the_demo_page_exists_only_in_the_demo(client):
    assert client.get("/demo/signup").status_code == 404


def test_in_the_demo_a_newcomer_signs_up_confirms_and_unsubscribes_in_one_click(demo_app):  # noqa: F811
    browser = demo_app.test_client()
    page = browser.get("/demo/signup")
    assert page.status_code == 200
    action = re.search(
        r'<form method="post" action="http://127\.0\.0\.1:5000(/f/newsletter)"', page.text
    ).group(1)
    assert (
        browser.post(action, data={"email": "newcomer@example.org", "marketing": "yes"}).status_code
        == 303
    )
    with demo_app.app_context():
        outbox.work(once=True)
        [caught] = [m for m in mailbox.messages() if m.rcpt_to == "newcomer@example.org"]
        link = re.search(r"http://127\.0\.0\.1:5000(/d/\S+)", caught.part("plain")).group(1)
    page = browser.get(link)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert browser.post(link, data={"csrf_token": token}).status_code == 200
    with demo_app.app_context():
        person = contacts.find_by_email("newcomer@example.org")
        assert person.opt_in_status == OptIn.DOUBLE
        assert subscribed(person, "newsletter")
        # The demo's own draft for the list, as staff find it under Campaigns.
        draft = db.session.scalar(
            sa.select(campaigns.Campaign)
            .join(lists.MailingList, lists.MailingList.id == campaigns.Campaign.list_id)
            .where(lists.MailingList.slug == "newsletter")
        )
        campaign_id, subject = draft.id, draft.subject
        assert draft.status == "draft"
    staff_browser = signed_in_client(demo_app)
    confirm = staff_browser.get(f"/staff/campaigns/{campaign_id}/send")
    assert confirm.status_code == 200
    sent = staff_browser.post(
        f"/staff/campaigns/{campaign_id}/send", data={"csrf_token": csrf_token(confirm.text)}
    )
    assert sent.status_code == 303
    with demo_app.app_context():
        jobs.work(once=True)  # the campaign's job queues its messages
        outbox.work(once=True)  # the outbox hands them to the demo mailbox's SMTP server
        [caught] = [
            m
            for m in mailbox.messages()
            if m.subject == subject and m.rcpt_to == "newcomer@example.org"
        ]
        mail_id = caught.id
        text = caught.part("plain")
        assert "List-Unsubscribe" in caught.parsed()
    assert re.search(r"Leave this list: http://127\.0\.0\.1:5000/o/\S+", text)
    shown = staff_browser.get(f"/staff/mailbox/{mail_id}")
    form = re.search(
        r'<form method="post" action="http://127\.0\.0\.1:5000(/o/[^"]+)" '
        r'class="one-click" enctype="multipart/form-data">\s*'
        r'<input type="hidden" name="List-Unsubscribe" value="One-Click">',
        shown.text,
    )
    assert form, "the message page offers the one-click button"
    mail_client = demo_app.test_client(use_cookies=False)
    answer = mail_client.post(
        form.group(1), data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data"
    )
    assert answer.status_code == 200
    with demo_app.app_context():
        person = contacts.find_by_email("newcomer@example.org")
        assert not subscribed(person, "newsletter")


def test_two_sign_ups_of_one_new_address_at_once_both_get_the_answer(base_app):
    """A double click on a web form's button, done by two outbox workers at once (PostgreSQL):
    each finds no contact and adds one; the second waits for the first's address to commit
    and must then sign the first's contact up, not fail on the address being taken."""
    with base_app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("SQLite serialises writers; the race is PostgreSQL's")
        engine = db.engine
        slug = f"race-{secrets.token_hex(4)}"
        list_id = lists.create_list(slug, "Race").id
        db.session.commit()
    address = f"race-{secrets.token_hex(6)}@example.com"
    with base_app.app_context():
        visitor = base_app.test_client(use_cookies=False)
        answer = visitor.post(f"/f/{slug}", data={"email": address, "marketing": "yes"})
    assert answer.status_code == 303
    assert answer.headers["Location"].endswith("/signup/sent")

    def second_worker():
        with base_app.app_context():
            webforms.answer_queued()
            db.session.commit()

    try:
        with base_app.app_context():
            # The first click's contact, added and not yet committed: its worker is halfway.
            contacts.add_contact(address, method=webforms.METHOD, actor=webforms.ACTOR)
            thread = threading.Thread(target=second_worker)
            thread.start()
            with engine.connect() as probe:
                assert waiting_for_a_lock(probe), "the second worker never waited for the first"
            db.session.commit()
            thread.join(timeout=20)
        with base_app.app_context():
            [person] = db.session.scalars(sa.select(contacts.Contact)
                                          .where(contacts.Contact.email == address)).all()
            assert subscribed(person, slug)
            assert person.opt_in_status == OptIn.SINGLE_WEBFORM
    finally:
        with base_app.app_context():
            ids = sa.select(contacts.Contact.id).where(contacts.Contact.email == address)
            for model in (lists.Subscription, doi.DoiRequest, outbox.OutboxMessage):
                db.session.execute(sa.delete(model).where(model.contact_id.in_(ids)))
            db.session.execute(sa.delete(webforms.QueuedSignup)
                               .where(webforms.QueuedSignup.address == address))
            db.session.execute(sa.delete(contacts.Contact).where(contacts.Contact.email == address))
            db.session.execute(sa.delete(lists.MailingList).where(lists.MailingList.id == list_id))
            db.session.commit()
