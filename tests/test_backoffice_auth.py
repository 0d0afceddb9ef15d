"""Staff sign-in (S1): passwords, sessions, the same answer for every failure, roles."""

import re
from html import unescape

import pytest
from flask import url_for
from wtforms.validators import ValidationError

from portal import staff
from portal.backoffice.auth import SignInForm
from portal.db import db
from portal.hardening import limiter

PASSWORD = "correct horse battery"


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, "the form carries a CSRF token"
    return match.group(1)


def field_description(html: str, control_id: str) -> str:
    """Return what a screen reader reads as a form control's description: the text of the
    elements its aria-describedby names, each of which must be the only one with its id."""
    control = re.search(rf'<(?:input|textarea|select)\b[^>]*\bid="{control_id}"[^>]*>', html)
    assert control, f"a control with the id {control_id!r}"
    described = re.search(r'aria-describedby="([^"]*)"', control.group(0))
    texts = []
    for ident in described.group(1).split() if described else []:
        found = re.findall(rf'<(\w+)\b[^>]*\bid="{ident}"[^>]*>(.*?)</\1>', html, re.S)
        assert len(found) == 1, f"{len(found)} elements have the id {ident!r}"
        texts.append(unescape(re.sub(r"<[^>]+>", "", found[0][1])).strip())
    return " ".join(texts)


def sign_in(client, email, password, *, follow=False):
    page = client.get("/staff/sign-in")
    return client.post(
        "/staff/sign-in",
        data={"email": email, "password": password, "csrf_token": csrf_token(page.text)},
        follow_redirects=follow,
    )


@pytest.fixture
def client(app):
    """A browser on HTTPS: staff cookies are Secure, and Flask-WTF checks the Referer there."""
    browser = app.test_client()
    browser.environ_base.update({"wsgi.url_scheme": "https",
                                 "HTTP_REFERER": "https://localhost/staff/"})
    return browser


@pytest.fixture
def admin(app):
    user = staff.create_staff("admin@example.com", PASSWORD, "admin")
    db.session.commit()
    return user


@pytest.fixture
def agent(app):
    user = staff.create_staff("agent@example.com", PASSWORD, "agent")
    db.session.commit()
    return user


def test_sign_in_and_out(client, admin):
    response = sign_in(client, "Admin@Example.com ", PASSWORD)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/staff/")
    home = client.get("/staff/")
    assert home.status_code == 200
    assert "admin@example.com" in home.text
    signed_out = client.post("/staff/sign-out", data={"csrf_token": csrf_token(home.text)})
    assert signed_out.status_code == 303
    assert client.get("/staff/").status_code == 302


def test_staff_pages_vary_on_the_session_cookie(client, admin):
    assert "Cookie" in client.get("/staff/sign-in").headers["Vary"]
    sign_in(client, admin.email, PASSWORD)
    assert "Cookie" in client.get("/staff/").headers["Vary"]


def test_session_cookie_is_renewed_at_sign_in(client, admin):
    client.get("/staff/sign-in")
    before = client.get_cookie("session").value
    sign_in(client, admin.email, PASSWORD)
    assert client.get_cookie("session").value != before


def test_session_cookie_flags(client, admin):
    response = sign_in(client, admin.email, PASSWORD)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" in cookie  # outside the demo


def test_same_answer_for_wrong_password_unknown_address_and_locked_account(client, admin):
    wrong = sign_in(client, admin.email, "not the password").text
    unknown = sign_in(client, "nobody@example.com", PASSWORD).text
    admin.locked_until = staff.utcnow().replace(year=2999)
    db.session.commit()
    locked = sign_in(client, admin.email, PASSWORD).text

    def answer(html):
        return re.search(r'<p class="error"[^>]*>(.*?)</p>', html, re.S).group(1)

    assert answer(wrong) == answer(unknown) == answer(locked)
    assert "not right" in answer(wrong)


def test_repeated_failures_lock_the_account(client, app, admin):
    limiter.enabled = False  # this test is about the lock, not the rate limit
    try:
        for _ in range(staff.LOCK_AFTER_FAILURES):
            sign_in(client, admin.email, "wrong password!")
        # Even the right password is refused while locked.
        assert sign_in(client, admin.email, PASSWORD).status_code == 200
        assert client.get("/staff/").status_code == 302
    finally:
        limiter.enabled = True


def test_sign_in_is_rate_limited(client, admin):
    statuses = [sign_in(client, admin.email, "wrong password!").status_code for _ in range(12)]
    assert statuses[:10] == [200] * 10
    assert statuses[-1] == 429


def test_sign_in_tells_its_limit_and_no_other_page_does(client, admin):
    # The limiter's hooks run on the back office's requests only (hardening._init_limiter):
    # there its headers tell the sign-in limit that was just counted.
    first = sign_in(client, admin.email, "wrong password!")
    second = sign_in(client, admin.email, "wrong password!")
    assert first.headers["X-RateLimit-Limit"] == "10"
    assert [int(each.headers["X-RateLimit-Remaining"]) for each in (first, second)] == [9, 8]
    # Elsewhere nothing is limited by a decorator, and no answer tells a limit.
    assert "X-RateLimit-Limit" not in client.get("/").headers
    assert "X-RateLimit-Limit" not in client.get("/staff/sign-in").headers


def test_sign_in_without_csrf_token_is_refused_kindly(client, admin):
    response = client.post("/staff/sign-in", data={"email": admin.email, "password": PASSWORD})
    assert response.status_code == 400
    assert "Please review and resubmit" in response.text
    assert client.get("/staff/").status_code == 302


def test_next_is_followed_on_this_site_only(client, admin):
    page = client.get("/staff/sign-in?next=https://evil.example/")
    response = client.post(
        "/staff/sign-in?next=https://evil.example/",
        data={"email": admin.email, "password": PASSWORD, "csrf_token": csrf_token(page.text)},
    )
    assert response.headers["Location"].endswith("/staff/")


def sign_in_with_next(client, email, next_url):
    page = client.get("/staff/sign-in", query_string={"next": next_url})
    return client.post(
        "/staff/sign-in",
        query_string={"next": next_url},
        data={"email": email, "password": PASSWORD, "csrf_token": csrf_token(page.text)},
    )


@pytest.mark.parametrize(
    "next_url",
    [
        "/\t/evil.example/x",  # Werkzeug drops the tab: the header would say //evil.example/x
        "/\r\n/x",
        "/staff/\r\nSet-Cookie: x=1",  # a line break in a header made the sign-in a 500
        "/\n/x",
        "/\x7f/x",
        "/\\evil.example/x",  # browsers read a backslash as a slash
        "\\\\evil.example/x",
        "//evil.example/x",
        "https://evil.example/staff/",
        "http:/staff/jobs",
        "/%2F%2Fevil.example/x",
        "/p/some-token",  # a page of this site, but not a back-office one
        "/staff/../t/c/token",
        "/staff/%2e%2e/t/c/token",
        "staff/jobs",
    ],
)
def test_a_next_that_is_no_staff_page_ends_on_the_overview(client, admin, next_url):
    response = sign_in_with_next(client, admin.email, next_url)
    assert response.status_code == 303
    assert response.headers["Location"] == "/staff/"
    assert client.get("/staff/").status_code == 200  # signed in all the same


def test_a_staff_page_asked_before_sign_in_opens_after_it(client, admin):
    asked = client.get("/staff/jobs?page=2")
    assert asked.status_code == 302
    sign_in_page = asked.headers["Location"]
    page = client.get(sign_in_page)
    response = client.post(
        sign_in_page,
        data={"email": admin.email, "password": PASSWORD, "csrf_token": csrf_token(page.text)},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/staff/jobs?page=2"


def test_unknown_role_and_short_password_are_refused(app):
    with pytest.raises(staff.StaffError, match="role"):
        staff.create_staff("x@example.com", PASSWORD, "owner")
    with pytest.raises(staff.StaffError, match="at least 12"):
        staff.create_staff("x@example.com", "short", "agent")


def test_staff_create_reads_the_password_from_stdin(runner, app):
    result = runner.invoke(args=["staff", "create", "new@example.com", "--role", "agent"],
                           input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    user = db.session.scalar(db.select(staff.StaffUser).filter_by(email="new@example.com"))
    assert user.role == "agent"
    assert user.check_password(PASSWORD)


def test_staff_create_refuses_a_duplicate_in_one_line(runner, admin):
    result = runner.invoke(args=["staff", "create", admin.email, "--role", "agent"],
                           input=PASSWORD + "\n")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: a staff account with this email address already exists"


# The role walk: every staff URL as nobody, as an agent and as an admin.
SAMPLE_VALUES = {
    "mail_id": 1,
    "job_id": 1,
    "kind": "reencrypt-fields",
    "campaign_id": 1,
    "public_id": "unknown",
    "event": "staff_opt_out",
    "field_name": "card_number",
    "filter_id": 1,
    "consent_id": 1,
    "list_id": 1,
}
ADMIN_ONLY = {
    "backoffice.jobs_start",
    "backoffice.jobs_resume",
    # The consent-page settings (S2).
    "backoffice.settings_edit",
    "backoffice.settings_history",
    "backoffice.settings_preview",
    "backoffice.settings_preview_page",
    "backoffice.consent_new",
    "backoffice.consent_edit",
    "backoffice.consent_retire",
    "backoffice.list_new",
    "backoffice.list_edit",
    # Erasure and lifting a restriction (P7, P8).
    "backoffice.erasure_list",
    "backoffice.erasure_extend",
    "backoffice.erase",
    "backoffice.delete",
    "backoffice.lift_restriction",
}


def staff_rules(app):
    return [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("backoffice.")]


def build(app, rule):
    with app.test_request_context():
        return url_for(rule.endpoint, **{name: SAMPLE_VALUES[name] for name in rule.arguments})


def test_role_walk_covers_every_staff_url(app, client, admin, agent):
    rules = staff_rules(app)
    assert len(rules) >= 9
    for rule in rules:
        url = build(app, rule)
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        for method in methods:
            # Nobody: sent to sign in (or shown the sign-in page itself).
            client.get("/staff/sign-in")  # a fresh session for the CSRF token
            response = client.open(url, method=method, data={})
            if rule.endpoint == "backoffice.sign_in":
                assert response.status_code in (200, 400), (url, method)
            else:
                assert response.status_code in (302, 400), (url, method, response.status_code)
                if response.status_code == 302:
                    assert "/staff/sign-in" in response.headers["Location"]

    for user, role in ((agent, "agent"), (admin, "admin")):
        sign_in(client, user.email, PASSWORD)
        token = csrf_token(client.get("/staff/jobs").text)
        for rule in rules:
            url = build(app, rule)
            if rule.endpoint == "backoffice.sign_out":
                continue  # walked last, below
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                response = client.open(url, method=method, data={"csrf_token": token})
                if rule.endpoint in ADMIN_ONLY and role != "admin":
                    assert response.status_code == 403, (role, url)
                    assert "You may not open this page" in response.text
                else:
                    # 404: the sample record does not exist, or the page is demo-only.
                    assert response.status_code in (200, 303, 404), (role, url, method)
        assert client.post("/staff/sign-out", data={"csrf_token": token}).status_code == 303
        assert client.get("/staff/").status_code == 302


# The page as a keyboard or screen-reader user meets it.


def test_flashed_messages_open_the_main_content(client, admin):
    # "Skip to content" and landmark navigation land on <main>: a message before it is skipped.
    home = sign_in(client, "admin@example.com", PASSWORD, follow=True)
    client.post("/staff/sign-out", data={"csrf_token": csrf_token(home.text)})
    page = client.get("/staff/sign-in").text
    main = page.split('<main id="main">', 1)[1]
    assert main.lstrip().startswith('<div class="flashes" role="status"><p>You are signed out.</p>')
    assert "flashes" not in page.split('<main id="main">', 1)[0]


def test_two_errors_on_a_sign_in_field_are_read_together(client, admin, monkeypatch):
    def also_refused(form, field):
        raise ValidationError("This address is not one of ours.")

    monkeypatch.setattr(SignInForm, "validate_email", also_refused, raising=False)
    answer = sign_in(client, "a" * 255, PASSWORD)
    assert answer.status_code == 200
    description = field_description(answer.text, "email")
    assert "cannot be longer than 254 characters" in description
    assert "This address is not one of ours." in description
