"""Web hardening (issue 3, item 7): headers, hosts, proxies and friendly error pages."""

import pytest
from conftest import make_config
from test_backoffice_auth import csrf_token

from portal import contacts
from portal import create_app
from portal import lists
from portal.db import NulCharacter
from portal.db import db


def test_every_page_has_the_security_headers(client):
    for url in ("/", "/staff/sign-in", "/no-such-page"):
        headers = client.get(url).headers
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy
        assert "style-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"


def test_no_page_has_inline_script_or_style(client):
    for url in ("/", "/staff/sign-in", "/no-such-page"):
        html = client.get(url).text
        assert "<script>" not in html and "<style" not in html and " style=" not in html
        assert "onclick=" not in html


@pytest.mark.parametrize(
    ("method", "url", "status", "title"),
    [
        ("GET", "/no-such-page", 404, "Page not found"),
        ("DELETE", "/", 405, "This action is not available here"),
        ("GET", "/staff/jobs", 302, None),
    ],
)
def test_friendly_error_pages(client, method, url, status, title):
    response = client.open(url, method=method)
    assert response.status_code == status
    if title:
        assert f"<h1>{title}</h1>" in response.text
        assert "Traceback" not in response.text


def test_error_pages_speak_the_visitors_language(client):
    response = client.get("/no-such-page", headers={"Accept-Language": "de"})
    assert response.status_code == 404
    assert '<html lang="de">' in response.text
    assert "Page not found" not in response.text


def test_an_oversized_request_gets_a_friendly_413(client, app):
    too_long = "x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    response = client.post("/staff/sign-in", data={"email": too_long})
    assert response.status_code == 413
    assert "That was too much data" in response.text


def test_an_untrusted_host_is_refused(tmp_path):
    app = create_app(make_config(f"sqlite:///{tmp_path}/h.sqlite3",
                                 TRUSTED_HOSTS=["prefs.example.test"]))
    client = app.test_client()
    assert client.get("/", headers={"Host": "prefs.example.test"}).status_code == 200
    refused = client.get("/", headers={"Host": "evil.example"})
    assert refused.status_code == 400
    assert "evil.example" not in refused.text


def test_trusted_hosts_default_to_the_base_url_outside_tests(tmp_path):
    config = make_config(f"sqlite:///{tmp_path}/h.sqlite3", TESTING=False)
    app = create_app(config)
    assert app.config["TRUSTED_HOSTS"] == ["prefs.example.test"]


def test_proxy_hops_decide_which_address_is_the_client(tmp_path):
    seen = {}
    app = create_app(make_config(f"sqlite:///{tmp_path}/h.sqlite3", PORTAL_PROXY_HOPS=1))

    @app.get("/__address")
    def address():
        from flask import request

        seen["address"] = request.remote_addr
        return ""

    app.test_client().get("/__address", headers={"X-Forwarded-For": "203.0.113.9"},
                          environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert seen["address"] == "203.0.113.9"

    plain = create_app(make_config(f"sqlite:///{tmp_path}/h2.sqlite3"))
    plain.add_url_rule("/__address", view_func=address)
    plain.test_client().get("/__address", headers={"X-Forwarded-For": "203.0.113.9"},
                            environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert seen["address"] == "10.0.0.1"



@pytest.mark.parametrize(
    ("path", "status", "kept"),
    [
        # No session and no token: "review and resubmit", with the typed address kept.
        ("/link", 400, True),
        ("/staff/sign-in", 400, False),
        # The web form takes no token: the address is signed up as usual.
        ("/f/news", 303, False),
    ],
)
def test_a_form_part_whose_name_cannot_be_read_is_dropped_not_a_500(
    client, app, path, status, kept
):
    # A line break inside a multipart part's name="..." leaves Werkzeug a field named None,
    # which Flask-WTF's CSRF check used to fail on (found by tests/test_fuzz_forms.py).
    lists.create_list("news", "News")
    db.session.commit()
    response = client.post(path, data={"\n": "x", "email": "someone@example.com"},
                           content_type="multipart/form-data")
    assert response.status_code == status
    assert ("someone@example.com" in response.text) is kept



def test_a_nul_character_that_reaches_the_database_is_a_friendly_400_on_both(
    client, admin_client
):
    # PostgreSQL cannot store NUL in text (its driver raised: a 500) and SQLite kept it; now
    # both refuse it, and the request is answered as malformed. Found by the fuzz tests.
    response = client.get("/f/news%00")
    assert response.status_code == 400
    assert "This request could not be understood" in response.text

    ada = contacts.add_contact("ada@example.com", method="test", actor="test")
    db.session.commit()
    record = f"/staff/contacts/{ada.public_id}"
    token = csrf_token(admin_client.get(record).text)
    response = admin_client.post(f"{record}/opt-in/staff_opt_out",
                                 data={"csrf_token": token, "reason": "asked\x00 by phone"})
    assert response.status_code == 400
    assert "This request could not be understood" in response.text
    db.session.expire_all()
    assert ada.opt_in_status == "none"
    # The session is usable again at once.
    assert admin_client.get(record).status_code == 200


def test_text_with_a_nul_character_is_refused_before_the_database(app):
    with pytest.raises(NulCharacter):
        contacts.add_contact("ada@example.com", first_name="A\x00da", method="test", actor="t")
    db.session.rollback()


def test_each_header_is_sent_once_and_a_link_pages_own_values_win(client):
    # A bad link's page goes through the contact pages' own headers and the portal's: the
    # Referrer-Policy both name, and every other header, appears once.
    page = client.get("/p/not-a-token")
    assert page.status_code == 404
    names = [name.lower() for name, _value in page.headers]
    assert len(names) == len(set(names)), names
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Robots-Tag"] == "noindex"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_security_headers_are_added_to_any_answer_that_lacks_them(scheme):
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    from portal.hardening import SECURITY_HEADERS
    from portal.hardening import SecurityHeaders

    # An answer with a header of its own (in another case) keeps it, alone; the others come.
    inner = Response("x", headers=[("x-frame-options", "SAMEORIGIN")])
    answer = Client(SecurityHeaders(inner)).get("/", base_url=f"{scheme}://localhost")
    assert answer.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    for name, value in SECURITY_HEADERS:
        if name != "X-Frame-Options":
            assert answer.headers.getlist(name) == [value]
    hsts = answer.headers.getlist("Strict-Transport-Security")
    assert hsts == (["max-age=31536000"] if scheme == "https" else [])
    assert answer.get_data() == b"x"


def test_a_blueprints_answer_headers_replace_the_views_own(tmp_path):
    from flask import Blueprint

    from portal.hardening import answer_headers

    app = create_app(make_config(f"sqlite:///{tmp_path}/h.sqlite3"))
    pages = Blueprint("answer_headers_test", __name__)

    @pages.route("/own-headers")
    def own_headers():
        return "x", 200, {"cache-control": "public, max-age=600", "X-Robots-Tag": "all"}

    @pages.after_request
    def private(response):
        answer_headers((("Cache-Control", "no-store"), ("X-Robots-Tag", "noindex")))
        return response

    app.register_blueprint(pages)
    answer = app.test_client().get("/own-headers")
    assert answer.headers.getlist("Cache-Control") == ["no-store"]
    assert answer.headers.getlist("X-Robots-Tag") == ["noindex"]
    assert answer.headers["X-Content-Type-Options"] == "nosniff"  # the defaults still come
    names = [name.lower() for name, _value in answer.headers]
    assert len(names) == len(set(names)), names


def test_strict_transport_security_only_over_https(app):
    plain = app.test_client().get("/", base_url="http://localhost")
    secure = app.test_client().get("/", base_url="https://localhost")
    assert "Strict-Transport-Security" not in plain.headers
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
