"""The way back in (B1): "email me a fresh link" answers the same for every address."""

import re

import pytest

from portal import contacts
from portal import outbox
from portal import suppression
from portal.db import db


@pytest.fixture
def browser(client):
    client.environ_base["HTTP_REFERER"] = "https://localhost/"
    return client


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
    queued = [m for m in outbox.recent() if m.subject == "Your link to your privacy preferences"]
    assert [m.recipient for m in queued] == ["known@example.com"] * 3  # 3 per hour


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
    queued = [m for m in outbox.recent() if m.subject == "Your link to your privacy preferences"]
    assert len(queued) == 20


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
