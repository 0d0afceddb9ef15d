"""The email footer (N4): staff-written, sandboxed, with the contact's own preference link."""

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from test_backoffice_auth import csrf_token
from test_backoffice_settings import settings_data
from test_preferences import read_document

from portal import contacts
from portal import footer
from portal import jobs
from portal import lists
from portal import outbox
from portal import settings
from portal.db import db
from portal.db import utcnow

DOI_SUBJECT = "Please confirm you want our email"
DOI_REMINDER = "Reminder: please confirm you want our email"


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
        "<p>{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}</p>",  # a RecursionError
        "<p>{{ first_name * 10**9 }}</p>",  # over the sandbox's size limit
    ],
    ids=["sandbox-escape", "app-objects", "syntax-error", "division-by-zero", "recursion",
         "too-large"],
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


# --- Which mail carries it (N4: every mail staff send) -----------------------------------------

STAFF_FOOTER = (
    '<p>Hello {{ first_name }}. <a href="{{ preferences_url }}">Your choices</a></p>'
    "<p>Example Ltd, 1 Main Street</p>"
)


def received_parts(smtp, address: str, subject: str) -> tuple[str, str]:
    """Deliver the outbox and return the plain and HTML parts of the one mail with `subject`,
    checking that the HTML is a whole document titled with it, any footer within its body."""
    outbox.work(once=True)
    [message] = [m.message for m in smtp.to(address) if m.message["Subject"] == subject]
    plain = message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    rich = message.get_body(preferencelist=("html",)).get_content()
    document = read_document(rich)
    assert (document.lang, document.title) == ("en", subject)
    if 'class="footer"' in rich:
        assert rich.index("<body>") < rich.index('<div class="footer">') < rich.index("</body>")
    return plain, rich


def footer_of(plain: str) -> str:
    """Return what follows the signature separator, or "" when there is none."""
    _, separator, rest = plain.partition("\n-- \n")
    return rest if separator else ""


def assert_personal_footer(client, plain: str, rich: str) -> None:
    """The staff footer is in both parts, with the contact's own preference link, which works."""
    assert re.search(
        r"Hello Ada\. Your choices <https://prefs\.example\.test/p/\S+>", footer_of(plain)
    )
    assert "Example Ltd, 1 Main Street" in footer_of(plain)
    block = rich[rich.index('<div class="footer">') :]
    assert "Example Ltd, 1 Main Street" in block
    link = page_link(footer_of(plain))
    assert re.search(
        rf'<a href="https://prefs\.example\.test{re.escape(link)}"[^>]*>Your choices', block
    )
    page = client.get(link)
    assert page.status_code == 200
    assert "Hello Ada." in page.text


@pytest.fixture
def staff_footer(app):
    set_footer(STAFF_FOOTER)


def test_a_double_opt_in_staff_send_from_the_record_carries_the_footer(
    app, reader, agent_client, client, smtp, staff_footer
):
    page = agent_client.get("/staff/double-opt-in")
    answer = agent_client.post(
        f"/staff/contacts/{reader.public_id}/double-opt-in",
        data={"csrf_token": csrf_token(page.text)},
    )
    assert answer.status_code == 303
    plain, rich = received_parts(smtp, reader.email, DOI_SUBJECT)
    assert "https://prefs.example.test/d/" in plain.split("\n-- \n")[0]
    assert_personal_footer(client, plain, rich)


def test_a_double_opt_in_staff_send_to_a_whole_list_carries_the_footer(
    app, reader, agent_client, client, smtp, staff_footer
):
    news = lists.create_list("news", "News")
    lists.set_subscription(reader, news, True, method="staff", actor="t")
    db.session.commit()
    page = agent_client.get("/staff/double-opt-in")
    started = agent_client.post(
        "/staff/double-opt-in", data={"csrf_token": csrf_token(page.text), "list_id": str(news.id)}
    )
    assert started.status_code == 303
    assert jobs.work(once=True) == 1
    plain, rich = received_parts(smtp, reader.email, DOI_SUBJECT)
    assert_personal_footer(client, plain, rich)


def test_a_sign_ups_own_double_opt_in_and_its_reminder_have_no_footer(
    app, runner, smtp, staff_footer, monkeypatch
):
    lists.create_list("news", "News")  # the list the sign-up form joins
    db.session.commit()
    now = [utcnow()]
    monkeypatch.setattr("portal.doi.utcnow", lambda: now[0])
    visitor = app.test_client(use_cookies=False)
    answer = visitor.post("/f/news", data={"email": "new@example.com", "marketing": "yes"})
    assert answer.status_code == 303
    plain, rich = received_parts(smtp, "new@example.com", DOI_SUBJECT)
    assert "https://prefs.example.test/d/" in plain
    assert footer_of(plain) == ""
    assert "Example Ltd" not in plain + rich and "/p/" not in plain + rich

    now[0] += timedelta(days=3)
    assert runner.invoke(args=["doi", "remind"]).exit_code == 0
    plain, rich = received_parts(smtp, "new@example.com", DOI_REMINDER)
    assert "Example Ltd" not in plain + rich and "/p/" not in plain + rich


def test_a_reminder_of_a_staff_request_carries_the_footer(
    app, reader, runner, client, smtp, staff_footer, monkeypatch
):
    now = [utcnow()]
    monkeypatch.setattr("portal.doi.utcnow", lambda: now[0])
    assert runner.invoke(args=["doi", "send", reader.email]).exit_code == 0
    now[0] += timedelta(days=3)
    assert runner.invoke(args=["doi", "remind"]).exit_code == 0
    plain, rich = received_parts(smtp, reader.email, DOI_REMINDER)
    assert_personal_footer(client, plain, rich)


def test_stopping_and_lifting_processing_mail_carries_the_footer(
    app, reader, admin_client, client, smtp, staff_footer
):
    path = f"/staff/contacts/{reader.public_id}/stop-processing"
    form = admin_client.get(path)
    stopped = admin_client.post(
        path, data={"csrf_token": csrf_token(form.text), "reason": "Asked by phone."}
    )
    assert stopped.status_code == 303
    plain, rich = received_parts(smtp, reader.email, "We have stopped processing your data")
    assert_personal_footer(client, plain, rich)
    assert "You stopped the processing of your data" in client.get(page_link(plain)).text

    path = f"/staff/contacts/{reader.public_id}/lift-restriction"
    form = admin_client.get(path)
    lifted = admin_client.post(
        path, data={"csrf_token": csrf_token(form.text), "reason": "The dispute is settled."}
    )
    assert lifted.status_code == 303
    plain, rich = received_parts(smtp, reader.email, "The processing of your data resumes")
    assert_personal_footer(client, plain, rich)


def assert_impersonal_footer(plain: str, rich: str) -> None:
    """The business's own text only: no preference link, no name."""
    assert "Example Ltd, 1 Main Street" in footer_of(plain)
    assert "Your choices" in footer_of(plain)  # the link's words, without the link
    block = rich[rich.index('<div class="footer">') :]
    assert "Example Ltd, 1 Main Street" in block and "<a" not in block
    assert "/p/" not in plain + rich
    assert "Ada" not in footer_of(plain) + block


def test_an_erasure_extension_notice_has_the_impersonal_footer(
    app, reader, admin_client, smtp, staff_footer
):
    contacts.request_erasure(reader, method="page", actor="contact")
    db.session.commit()
    path = f"/staff/erasure/{reader.public_id}/extend"
    form = admin_client.get(path)
    done = admin_client.post(
        path, data={"csrf_token": csrf_token(form.text), "months": "1", "reason": "Archives."}
    )
    assert done.status_code == 303
    plain, rich = received_parts(smtp, reader.email, "Your erasure request needs more time")
    assert "Archives." in plain
    assert_impersonal_footer(plain, rich)


def test_an_erasure_receipt_has_the_impersonal_footer(
    app, reader, admin_client, smtp, staff_footer
):
    path = f"/staff/contacts/{reader.public_id}/erase"
    form = admin_client.get(path)
    assert admin_client.post(path, data={"csrf_token": csrf_token(form.text)}).status_code == 303
    plain, rich = received_parts(smtp, "reader@example.com", "Your personal data has been erased")
    assert_impersonal_footer(plain, rich)


def test_without_a_staff_footer_erasure_mail_has_none(app, reader, admin_client, smtp):
    contacts.request_erasure(reader, method="page", actor="contact")
    db.session.commit()
    path = f"/staff/erasure/{reader.public_id}/extend"
    form = admin_client.get(path)
    admin_client.post(
        path, data={"csrf_token": csrf_token(form.text), "months": "1", "reason": "Archives."}
    )
    plain, rich = received_parts(smtp, reader.email, "Your erasure request needs more time")
    assert footer_of(plain) == ""
    assert 'class="footer"' not in rich and "/p/" not in plain + rich


def test_a_footer_can_leave_out_the_link_where_there_is_none(app, reader):
    set_footer(
        '<p>Example Ltd{% if preferences_url %}: <a href="{{ preferences_url }}">'
        "Your choices</a>{% endif %}</p>"
    )
    contacts.request_erasure(reader, method="page", actor="contact")
    db.session.commit()
    assert footer.render(reader) == ("Example Ltd", "<p>Example Ltd</p>")


def test_the_contacts_own_fresh_link_has_no_footer(app, reader, smtp, staff_footer):
    browser = app.test_client()
    browser.environ_base["HTTP_REFERER"] = "https://localhost/"
    page = browser.get("/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    browser.post("/link", data={"email": reader.email, "csrf_token": token})
    plain, rich = received_parts(smtp, reader.email, "Your link to your privacy preferences")
    assert footer_of(plain) == ""
    assert "Example Ltd" not in plain + rich


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("<p>{% for x in %}</p>", "The footer is not a valid template"),
        ("<p>{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}</p>", "cannot be rendered"),
        ("<p>{{ 10 // first_name|length }}</p>", "cannot be rendered: line 1 fails"),
        ("<p>{{ 'a' * 10**9 }}</p>",
         "cannot be rendered: a repeated text or list would be larger than 524,288 characters"),
        ("<p>{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}</p>",
         "cannot be rendered: the template takes more than 100,000 steps"),
    ],
    ids=["syntax-error", "recursion", "fails-without-values", "too-large", "too-many-steps"],
)
def test_the_settings_form_refuses_a_footer_that_cannot_render(
    app, admin_client, template, message
):
    page = admin_client.get("/staff/settings")
    answer = admin_client.post(
        "/staff/settings", data=settings_data(csrf_token(page.text), footer_html=template)
    )
    assert answer.status_code == 200
    assert message in answer.text
    assert settings.values()["footer_html"] == ""  # nothing saved
    assert admin_client.post(
        "/staff/settings",
        data=settings_data(csrf_token(page.text), footer_html="<p>Hello {{ first_name }}</p>"),
    ).status_code == 303
    assert settings.values()["footer_html"] == "<p>Hello {{ first_name }}</p>"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "<p>Acme</p>\n<p>{% if %}yes{% endif %}</p>",
            "The footer is not a valid template: on line 2, a {{ … }} or {% … %} is incomplete",
        ),
        ("<p>Acme</p>\n<p>{% if x %}</p>", "on line 2, a {{ … }} or {% … %} is incomplete"),
        (
            "<p>Acme</p>\n\n<p>{{ 1 / 0 }}</p>",
            "The footer cannot be rendered: line 3 fails with a sample contact's values.",
        ),
        (
            "<p>{{ fields.tier.name }}</p>",
            "line 1 uses a value a footer does not have. It may use preferences_url, first_name",
        ),
        (
            "<p>Acme</p>\n{% include 'footer.html' %}",
            "cannot use other templates: remove the include, extends or import on line 2.",
        ),
    ],
)
def test_a_broken_footer_is_refused_in_plain_words_with_its_line(admin_client, source, message):
    page = admin_client.get("/staff/settings")
    response = admin_client.post(
        "/staff/settings", data=settings_data(csrf_token(page.text), footer_html=source)
    )
    assert response.status_code == 200
    error = re.search(r'id="footer_html-error">(.*?)</p>', response.text, re.S)
    error = error.group(1).replace("&#39;", "'")
    assert message in error
    # No exception's name, nor Jinja's or Python's own words.
    assert not re.search(r"Error|Expected|undefined|division|loader", error)
    marked = 'aria-describedby="footer_html-hint footer_html-error" aria-invalid="true"'
    assert f"<textarea {marked}" in response.text
    assert settings.current() is None
