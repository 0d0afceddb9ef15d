"""The demo mailbox (issue 3, item 4): mail goes out over SMTP and is readable by staff."""

import re
import smtplib
from email.message import EmailMessage

import flask_migrate
import pytest
from conftest import make_config
from smtp_sink import free_port

from portal import create_app
from portal import demo
from portal import link_requests
from portal import mailbox
from portal import outbox
from portal.db import db


@pytest.fixture
def demo_app(tmp_path):
    app = create_app(
        make_config(f"sqlite:///{tmp_path}/demo.sqlite3", PORTAL_DEMO=True,
                    PORTAL_DEMO_SMTP_PORT=free_port(), PORTAL_BASE_URL="http://127.0.0.1:5000"),
        instance_path=str(tmp_path / "instance"),
    )
    with app.app_context():
        flask_migrate.upgrade()
        demo.load()
        db.session.commit()
    server = mailbox.start_server(app)
    yield app
    server.stop()
    with app.app_context():
        db.engine.dispose()


def signed_in_client(app):
    client = app.test_client()
    page = client.get("/staff/sign-in")
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    with app.app_context():
        password = demo._admin_password()
    response = client.post("/staff/sign-in", data={"email": demo.ADMIN_EMAIL, "password": password,
                                                   "csrf_token": token})
    assert response.status_code == 303, response.text
    return client


def test_demo_mail_arrives_in_the_mailbox_with_working_links(demo_app):
    with demo_app.app_context():
        contact = demo.contacts.find_by_email("contact02@demo.example")
        link = demo.manage_url(contact)
        outbox.enqueue(category="own_action", contact=contact, recipient=contact.email,
                       subject="Your preference link", text_body=f"Open {link} to choose.",
                       html_body=f'<p><a href="{link}">Your preferences</a></p>')
        db.session.commit()
        outbox.work(once=True)
        caught = [m for m in mailbox.messages() if m.subject == "Your preference link"]
        assert len(caught) == 1
        assert caught[0].rcpt_to == "contact02@demo.example"
        mail_id = caught[0].id

    client = signed_in_client(demo_app)
    listing = client.get("/staff/mailbox")
    assert "Your preference link" in listing.text
    page = client.get(f"/staff/mailbox/{mail_id}")
    assert page.status_code == 200
    assert "contact02@demo.example" in page.text
    assert f'<a href="{link}">{link}</a>' in page.text  # the text part's link works
    assert "Message-Id" in page.text or "Message-ID" in page.text
    html = client.get(f"/staff/mailbox/{mail_id}/html")
    # Its own policy, alone: the portal's default does not come beside it.
    policies = html.headers.getlist("Content-Security-Policy")
    assert len(policies) == 1 and "sandbox" in policies[0]
    assert f'href="{link}"' in html.text
    # The link opens the contact's page.
    assert client.get(link.removeprefix("http://127.0.0.1:5000")).status_code == 200


def _deliver(app, subject: str, text: str, html: str) -> int:
    """Send one message through the outbox (Flask-Mail over SMTP) and return its mailbox id."""
    with app.app_context():
        contact = demo.contacts.find_by_email("contact06@demo.example")  # a German contact
        outbox.enqueue(category="own_action", contact=contact, recipient=contact.email,
                       subject=subject, text_body=text, html_body=html)
        db.session.commit()
        outbox.work(once=True)
        return next(m.id for m in mailbox.messages() if m.subject == subject)


def _send_encoded(app, subject: str, text: str, html: str, text_cte: str, html_cte: str) -> int:
    """Send a message straight to the mailbox's SMTP server, its parts in the transfer
    encodings given, and return its mailbox id."""
    message = EmailMessage()
    message["From"] = "sender@example.test"
    message["To"] = "contact06@demo.example"
    message["Subject"] = subject
    message.set_content(text, cte=text_cte)
    message.add_alternative(html, subtype="html", cte=html_cte)
    with smtplib.SMTP(app.config["MAIL_SERVER"], app.config["MAIL_PORT"]) as smtp:
        smtp.send_message(message)
    with app.app_context():
        return next(m.id for m in mailbox.messages() if m.subject == subject)


GERMAN_TEXT = "Hallo Chloé,\nJemand – vermutlich Sie – hat Ihre Einstellungen geändert.\n"
GERMAN_HTML = "<p>Hallo Chloé,</p><p>Jemand – vermutlich Sie – hat sie geändert.</p>" \
              '<p><a href="http://127.0.0.1:5000/">Prüfen und bestätigen</a></p>'


@pytest.mark.parametrize("encoding", ["8bit (the outbox)", "quoted-printable", "base64",
                                      "quoted-printable text, base64 HTML"])
def test_the_mailbox_shows_accented_letters_and_dashes_as_sent(demo_app, encoding):
    subject = f"Ihre Änderungen – {encoding}"
    if encoding.startswith("8bit"):
        mail_id = _deliver(demo_app, subject, GERMAN_TEXT, GERMAN_HTML)
    else:
        text_cte, html_cte = {"quoted-printable": ("quoted-printable", "quoted-printable"),
                              "base64": ("base64", "base64")}.get(
                                  encoding, ("quoted-printable", "base64"))
        mail_id = _send_encoded(demo_app, subject, GERMAN_TEXT, GERMAN_HTML, text_cte, html_cte)

    client = signed_in_client(demo_app)
    assert subject in client.get("/staff/mailbox").text
    page = client.get(f"/staff/mailbox/{mail_id}").text
    assert "Hallo Chloé," in page
    assert "Jemand – vermutlich Sie – hat Ihre Einstellungen geändert." in page
    assert "\ufffd" not in page and "\\u2013" not in page
    frame = client.get(f"/staff/mailbox/{mail_id}/html").text
    assert "<p>Hallo Chloé,</p><p>Jemand – vermutlich Sie – hat sie geändert.</p>" in frame
    assert ">Prüfen und bestätigen</a>" in frame
    assert "\ufffd" not in frame and "\\u2013" not in frame


def test_the_text_part_is_marked_with_the_language_the_mail_is_in(demo_app):
    subject = "Ihr Link zu Ihren Einstellungen (Sprachtest)"
    with demo_app.app_context():
        contact = demo.contacts.find_by_email("contact06@demo.example")
        assert contact.language == "de"
        link_requests.send_link(contact, "own_action", subject)
        db.session.commit()
        outbox.work(once=True)
        ours = next(m.id for m in mailbox.messages() if m.subject == subject)
    # A message from elsewhere, which says nothing of its language.
    theirs = _send_encoded(demo_app, "Ohne Sprache", GERMAN_TEXT, GERMAN_HTML, "8bit", "8bit")
    client = signed_in_client(demo_app)

    # The page is in English; the German text is read as German (WCAG 3.1.2).
    page = client.get(f"/staff/mailbox/{ours}").text
    assert '<html lang="en">' in page
    assert "<dt>Content-Language</dt><dd>de</dd>" in page
    assert '<pre class="mail-text" lang="de">Guten Tag,' in page
    # Nothing says what language the other one is in: its text is left to the page's.
    assert '<pre class="mail-text">Hallo Chloé,' in client.get(f"/staff/mailbox/{theirs}").text


def test_the_mail_frame_opens_its_links_in_a_new_tab_and_runs_nothing(demo_app):
    mail_id = _deliver(demo_app, "Your changes", "See http://127.0.0.1:5000/ now.",
                       '<!DOCTYPE html><html><head><title>Mail</title></head><body>'
                       '<p><a href="http://127.0.0.1:5000/">Undo these changes</a></p>'
                       "</body></html>")
    client = signed_in_client(demo_app)

    page = client.get(f"/staff/mailbox/{mail_id}").text
    frames = re.findall(r'<iframe class="mail-html"[^>]*>', page)
    assert len(frames) == 1
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in frames[0]

    frame = client.get(f"/staff/mailbox/{mail_id}/html")
    # The base target comes first, after the doctype, so it wins and keeps standards mode.
    assert frame.text.startswith('<!DOCTYPE html><base target="_blank"><html>')
    assert frame.text.count("<base") == 1
    policy = frame.headers["Content-Security-Policy"]
    assert policy.endswith("; sandbox allow-popups allow-popups-to-escape-sandbox")
    assert "allow-scripts" not in policy and "allow-same-origin" not in policy
    assert "script-src" not in policy and "default-src 'none'" in policy
    assert frame.headers["X-Frame-Options"] == "SAMEORIGIN"


def test_the_mailbox_exists_only_in_the_demo(client):
    # Outside the demo (the regular test app) there is no mailbox, even for staff.
    from portal import staff

    staff.create_staff("boss@example.com", "correct horse battery", "admin")
    db.session.commit()
    client.environ_base.update({"wsgi.url_scheme": "https",
                                "HTTP_REFERER": "https://localhost/staff/"})
    page = client.get("/staff/sign-in")
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    client.post("/staff/sign-in", data={"email": "boss@example.com",
                                        "password": "correct horse battery", "csrf_token": token})
    assert client.get("/staff/").status_code == 200
    assert client.get("/staff/mailbox").status_code == 404
