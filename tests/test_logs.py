"""What the logs hold when something fails: no link token, no email address."""

import logging

import pytest
from werkzeug.serving import WSGIRequestHandler

from portal import contacts
from portal import jobs
from portal import lists
from portal import page_lane
from portal import unsubscribe
from portal.db import db
from portal.links import make_token
from portal.links import token_digest
from portal.mail import MessageRejected

ADDRESS = "jorg.muller@example.de"


def logged_text(caplog) -> str:
    """Return everything the captured records would print: messages and tracebacks."""
    return "\n".join(f"{record.getMessage()}\n{record.exc_text or ''}" for record in caplog.records)


@pytest.fixture
def production_errors(app, monkeypatch):
    """Unhandled errors answered with the error page and logged, as outside tests."""
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)


def failing_page(monkeypatch, error) -> str:
    """Return the page link of a contact whose page fails with error(token) when opened."""
    contact = contacts.add_contact(ADDRESS, method="cli", actor="test")
    db.session.commit()
    token = make_token("manage", contact)

    def fail(_payload):
        raise error(token)

    monkeypatch.setattr(page_lane, "read", fail)
    return token


def test_a_failing_contact_page_logs_its_endpoint_but_not_its_token_or_an_address(
    app, client, caplog, monkeypatch, production_errors
):
    token = failing_page(monkeypatch, lambda _token: MessageRejected(
        f"the recipient '{ADDRESS}' cannot be sent over SMTP"))
    with caplog.at_level(logging.ERROR):
        response = client.get(f"/p/{token}?list=news")
    assert response.status_code == 500
    assert "Traceback" not in response.text

    logged = logged_text(caplog) + caplog.text
    assert token not in logged
    assert token.split(".")[-1] not in logged  # not even its signature
    assert ADDRESS not in logged
    assert "preferences.manage /p/<token> [GET]" in logged
    assert token_digest(token) in logged  # to match it with a refused-link line
    # The traceback is still there to debug from, the address masked in the error's text.
    assert "Traceback" in logged
    assert "MessageRejected: the recipient 'j***@e***.de' cannot be sent" in logged


def test_a_token_quoted_by_an_error_is_masked(app, client, caplog, monkeypatch,
                                              production_errors):
    token = failing_page(monkeypatch, lambda token: LookupError(f"no page for {token}"))
    with caplog.at_level(logging.ERROR):
        assert client.get(f"/p/{token}").status_code == 500
    logged = logged_text(caplog) + caplog.text
    assert token not in logged
    assert "LookupError: no page for <link token>" in logged


@pytest.fixture
def rejecting_kind():
    """A job kind whose one item fails with an error that quotes the address it handled."""

    def items_after(_params, after, _limit):
        return [(1, 1)] if after < 1 else []

    def process(_params, _item):
        raise MessageRejected(f"the recipient '{ADDRESS}' cannot be sent over SMTP")

    kind = jobs.register(jobs.JobKind(name="test-reject", label="Test", count=lambda params: 1,
                                      items_after=items_after, process=process))
    yield kind
    jobs.KINDS.pop(kind.name)


def test_a_failing_job_logs_its_id_kind_and_error_type_but_no_address(app, caplog,
                                                                      rejecting_kind):
    job = jobs.start("test-reject", created_by="test")
    db.session.commit()
    with caplog.at_level(logging.ERROR):
        jobs.work(once=True)
    assert db.session.get(jobs.Job, job.id).status == "failed"

    logged = logged_text(caplog) + caplog.text
    assert ADDRESS not in logged
    assert f"job {job.id} (test-reject) failed: MessageRejected" in logged
    assert "Traceback" in logged
    assert "j***@e***.de" in logged


def dev_server_line(caplog, method: str, path: str, status: int) -> str:
    """Return what the development server (`flask serve`) logs for one request."""
    # The handler as run_simple builds it for a connection, without the connection.
    handler = WSGIRequestHandler.__new__(WSGIRequestHandler)
    handler.client_address = ("127.0.0.1", 50312)
    handler.command, handler.path, handler.request_version = method, path, "HTTP/1.1"
    handler.requestline = f"{method} {path} HTTP/1.1"
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        handler.log_request(status, 5120)
    return logged_text(caplog) + caplog.text


@pytest.mark.parametrize("link", ["page", "one-click"])
def test_the_development_servers_request_log_masks_link_tokens(app, caplog, link):
    contact = contacts.add_contact(ADDRESS, method="cli", actor="test")
    newsletter = lists.create_list("newsletter", "Newsletter")
    db.session.commit()
    if link == "page":
        method, prefix, token = "GET", "/p/", make_token("manage", contact)
    else:  # the List-Unsubscribe header's token, which never expires
        method, prefix, token = "POST", "/o/", unsubscribe.make_token(contact, newsletter)

    logged = dev_server_line(caplog, method, f"{prefix}{token}?list=news", 200)
    assert token not in logged
    assert token.split(".")[-1] not in logged  # not even its signature
    assert "127.0.0.1 - - " in logged
    assert f'"{method} {prefix}<link token>?list=news HTTP/1.1" 200 5120' in logged
