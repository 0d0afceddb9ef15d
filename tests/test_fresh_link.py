"""The way back in (B1): "email me a fresh link" answers the same for every address."""

import re

import pytest
import sqlalchemy as sa

from portal import contacts
from portal import link_requests
from portal import outbox
from portal import suppression
from portal.db import db
from portal.db import utcnow


@pytest.fixture
def browser(client):
    client.environ_base["HTTP_REFERER"] = "https://localhost/"
    return client


def links_queued() -> list:
    """Have the outbox worker compose the fresh links asked for; return the queued ones."""
    link_requests.answer()
    return [m for m in outbox.recent() if m.subject == "Your link to your privacy preferences"]


def ask(browser, address):
    page = browser.get("/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return browser.post("/link", data={"email": address, "csrf_token": token})


def test_the_answer_is_byte_identical_for_known_unknown_suppressed_and_limited(app, browser):
    contacts.add_contact("known@example.com", method="cli", actor="t")
    suppression.suppress("gone@example.com", "erased")
    db.session.commit()
    answers = [ask(browser, address) for address in
               ("known@example.com", "unknown@example.com", "gone@example.com")]
    answers += [ask(browser, "known@example.com") for _ in range(4)]  # past the address limit

    def essence(response):
        return response.status_code, response.headers["Location"], response.get_data()

    assert len({essence(answer) for answer in answers}) == 1
    assert answers[0].status_code == 303
    sent = browser.get(answers[0].headers["Location"])
    assert "Check your inbox" in sent.text
    assert [m.recipient for m in links_queued()] == ["known@example.com"] * 3  # 3 per hour


def test_every_request_does_the_same_work_in_the_same_statements(app, browser, statements):
    # The mail is composed by the outbox worker, not the request: an address on file must not
    # be answered more slowly than one that is not. Each request runs the same statements and
    # leaves one row that names a contact or none, never the address typed.
    known = contacts.add_contact("known@example.com", method="cli", actor="t")
    suppression.suppress("gone@example.com", "erased")
    db.session.commit()
    ask(browser, "warm-up@example.com")
    run = {}
    for address in ("known@example.com", "unknown@example.com", "gone@example.com",
                    "known@example.com", "known@example.com", "known@example.com"):
        statements.clear()
        ask(browser, address)
        # The test's savepoints (its commits) are numbered; the statements are what counts.
        run.setdefault(address, []).append([re.sub(r"sa_savepoint_\d+", "sp", statement)
                                            for statement in statements])
    shapes = {tuple(seen) for seen in run["known@example.com"] + run["unknown@example.com"]
              + run["gone@example.com"]}
    assert len(shapes) == 1  # known, unknown, suppressed and over the limit (the fourth) alike
    assert not any("outbox_messages" in statement for statement in shapes.pop())
    rows = db.session.scalars(sa.select(link_requests.LinkRequest.contact_id)
                              .order_by(link_requests.LinkRequest.id)).all()
    assert rows == [None, known.id, None, None, known.id, known.id, None]
    assert outbox.recent() == []
    assert len(links_queued()) == 3
    assert db.session.scalar(sa.select(sa.func.count()).select_from(link_requests.LinkRequest)) == 0


def test_the_worker_sends_no_link_to_an_erased_or_suppressed_contact(app, browser, smtp):
    erased = contacts.add_contact("erased@example.com", method="cli", actor="t")
    contacts.add_contact("later-suppressed@example.com", method="cli", actor="t")
    contacts.add_contact("reader@example.com", method="cli", actor="t")
    db.session.commit()
    for address in ("erased@example.com", "later-suppressed@example.com", "reader@example.com"):
        ask(browser, address)
    # Between the request and the worker's pass, one record is erased and one address put
    # on the suppression list: the worker checks again.
    erased.erased_at = utcnow()
    suppression.suppress("later-suppressed@example.com", "opted out")
    db.session.commit()
    outbox.work(once=True)
    assert [m.rcpt_tos for m in smtp.messages] == [["reader@example.com"]]
    # A second pass sends nothing again: each request is taken once.
    outbox.work(once=True)
    assert len(smtp.messages) == 1


def test_the_fresh_link_arrives_and_opens_the_page(app, browser, smtp):
    contacts.add_contact("reader@example.com", first_name="Ada", language="de",
                         method="cli", actor="t")
    db.session.commit()
    ask(browser, "Reader@Example.com")
    outbox.work(once=True)
    [received] = smtp.to("reader@example.com")
    text = received.message.get_body(preferencelist=("plain",)).get_content()
    assert "Ada" in text
    link = re.search(r"https://prefs\.example\.test(/p/\S+)", text).group(1)
    page = browser.get(link)
    assert page.status_code == 200
    assert '<html lang="de">' in page.text


def test_the_limit_per_ip_holds_across_addresses(app, browser):
    for n in range(25):
        contacts.add_contact(f"person{n}@example.com", method="cli", actor="t")
    db.session.commit()
    for n in range(25):
        assert ask(browser, f"person{n}@example.com").status_code == 303
    assert len(links_queued()) == 20


def test_a_malformed_address_gets_a_message_next_to_the_field(browser):
    response = ask(browser, "not an address")
    assert response.status_code == 200
    assert 'aria-invalid="true"' in response.text
    assert "Enter the email address our messages reach you at." in response.text
    assert 'value="not an address"' in response.text


def test_a_dead_link_offers_the_fresh_link_form(browser):
    response = browser.get("/p/k1.tampered")
    assert response.status_code == 404
    assert 'action="/link"' in response.text


# --- A form whose CSRF check fails: the form again, the address kept, nothing sent ------------

RESEND = "Please review and resend"


def mailed(smtp) -> list:
    """Deliver the outbox; return what the test SMTP server received."""
    outbox.work(once=True)
    return list(smtp.messages)


def resent(browser, page):
    """Send the form of a page again, as it is shown."""
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    address = re.search(r'name="email"[^>]*value="([^"]*)"', page.text).group(1)
    return browser.post("/link", data={"email": address, "csrf_token": token})


@pytest.mark.parametrize("start", ["/", "/p/k1.tampered"])
@pytest.mark.parametrize("fault", ["no cookie", "no token", "rotated key", "rotated with fallback"])
def test_a_failed_csrf_check_keeps_the_address_and_sends_nothing(
    app, browser, smtp, monkeypatch, start, fault
):
    contacts.add_contact("known@example.com", method="cli", actor="t")
    db.session.commit()
    page = browser.get(start)
    assert 'action="/link"' in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    data = {"email": "known@example.com", "csrf_token": token}
    if fault == "no cookie":
        browser.delete_cookie("session")
    elif fault == "no token":
        del data["csrf_token"]
    else:
        old = app.config["SECRET_KEY"]
        monkeypatch.setitem(app.config, "SECRET_KEY", "a-new-secret-key-after-rotation")
        if fault == "rotated with fallback":
            monkeypatch.setitem(app.config, "SECRET_KEY_FALLBACKS", [old])

    answers = {}
    for address in ("unknown@example.com", "known@example.com"):
        response = browser.post("/link", data={**data, "email": address})
        assert response.status_code == 400
        assert RESEND in response.text
        assert f'value="{address}"' in response.text
        assert 'aria-describedby="fresh-link-resubmit"' in response.text
        answers[address] = re.sub(r'name="csrf_token" value="[^"]+"', "", response.text)
    # The answer is the same for an address on file and one that is not, and sends nothing.
    assert answers["known@example.com"] == answers["unknown@example.com"].replace(
        "unknown@example.com", "known@example.com"
    )
    assert mailed(smtp) == []

    # Sent again as that page shows it, the form works.
    again = resent(browser, response)
    assert again.status_code == 303
    assert "Check your inbox" in browser.get(again.headers["Location"]).text
    assert [m.rcpt_tos for m in mailed(smtp)] == [["known@example.com"]]
