"""The email footer (N4): staff-written, sandboxed, with the contact's own preference link."""

import re
from urllib.parse import urlsplit

import pytest

from portal import contacts
from portal import footer
from portal import outbox
from portal import settings
from portal.db import db


@pytest.fixture
def reader(app):
    contact = contacts.add_contact("reader@example.com", first_name="Ada", method="cli", actor="t")
    db.session.commit()
    return contact


def set_footer(html: str) -> None:
    latest = settings.current()
    settings.save({"footer_html": html}, based_on=latest.version if latest else 0, author="t")
    db.session.commit()


def page_link(text: str) -> str:
    return re.search(r"https://prefs\.example\.test(/p/[^\s<>\"]+)", text).group(1)


def test_without_a_footer_of_their_own_every_mail_still_has_the_preference_link(
    app, reader, client
):
    text, html = footer.render(reader)
    assert "Your email preferences:" in text
    link = page_link(text)
    assert page_link(html) == link
    page = client.get(link)
    assert page.status_code == 200
    assert "Hello Ada." in page.text


def test_the_staff_footer_is_rendered_for_each_contact(app, reader):
    set_footer(
        '<p>Hello {{ first_name }}. <a href="{{ preferences_url }}">Your choices</a></p>'
        "<p>Example Ltd, 1 Main Street</p>"
    )
    text, html = footer.render(reader)
    assert re.search(r'<p>Hello Ada\. <a href="https://prefs\.example\.test/p/[^"]+"', html)
    assert "Your email preferences" not in html  # the staff footer has the link already
    assert re.search(r"Hello Ada\. Your choices <https://prefs\.example\.test/p/\S+>", text)
    assert "Example Ltd, 1 Main Street" in text.splitlines()[-1]


def test_a_footer_without_the_link_gets_it_added(app, reader):
    set_footer("<p>Example Ltd</p>")
    text, html = footer.render(reader)
    assert text.startswith("Example Ltd\nYour email preferences: https://prefs.example.test/p/")
    assert html.startswith("<p>Example Ltd</p><p>Your email preferences:")


def test_contact_values_are_escaped_and_sensitive_fields_masked(app, reader):
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    contacts.set_field_value(reader, card, "4111111111111111")
    reader.first_name = '<b onclick="x()">Ada</b>'
    db.session.commit()
    set_footer("<p>{{ first_name }} {{ fields.card_number }} {{ preferences_url }}</p>")
    text, html = footer.render(reader)
    assert "<b" not in html
    assert "&lt;b onclick" in html
    assert "1111" in text
    assert "4111111111111111" not in text + html


@pytest.mark.parametrize(
    "template",
    [
        "<p>{{ ''.__class__.__mro__[1].__subclasses__() }}</p>",  # the sandbox refuses it
        "<p>{{ config }} {{ request }} {{ self }}</p>",  # nothing of the app is reachable
        "<p>{% for x in %}</p>",  # a syntax error
        "<p>{{ 1 / 0 }}</p>",
    ],
    ids=["sandbox-escape", "app-objects", "syntax-error", "division-by-zero"],
)
def test_a_hostile_or_broken_footer_falls_back_to_the_plain_link(app, reader, template):
    set_footer(template)
    text, html = footer.render(reader)
    assert "subclasses" not in text
    assert "Config" not in text and "SECRET" not in text
    assert page_link(text) == page_link(html)


def test_add_footer_appends_to_both_parts_and_the_mail_arrives_with_it(app, reader, smtp):
    set_footer('<p>Example Ltd. <a href="{{ preferences_url }}">Preferences</a></p>')
    text, html = footer.add_footer(
        "Our news.", "<html><body><p>Our news.</p></body></html>", reader
    )
    assert html.endswith("</div></body></html>")
    outbox.enqueue(
        category="ad_hoc",
        contact=reader,
        recipient=reader.email,
        subject="News",
        text_body=text,
        html_body=html,
    )
    db.session.commit()
    outbox.work(once=True)
    [received] = smtp.to("reader@example.com")
    plain = received.message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    rich = received.message.get_body(preferencelist=("html",)).get_content()
    assert plain.startswith("Our news.\n\n-- \nExample Ltd. Preferences <https://")
    link = page_link(plain)
    assert page_link(rich) == link
    assert urlsplit("https://prefs.example.test" + link).path.startswith("/p/")


def test_add_footer_handles_a_text_only_mail(app, reader):
    text, html = footer.add_footer("Hello.\n", None, reader)
    assert html is None
    assert text.startswith("Hello.\n\n-- \n")
