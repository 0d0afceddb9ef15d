"""The demo mailbox (issue 3, item 4): mail goes out over SMTP and is readable by staff."""

import re

import flask_migrate
import pytest
from conftest import make_config
from smtp_sink import free_port

from portal import create_app
from portal import demo
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
    assert "sandbox" in html.headers["Content-Security-Policy"]
    assert f'href="{link}"' in html.text
    # The link opens the contact's page.
    assert client.get(link.removeprefix("http://127.0.0.1:5000")).status_code == 200


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
