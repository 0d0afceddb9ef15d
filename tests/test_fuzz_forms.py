"""Arbitrary input on every form a contact or a visitor can post, and on the link pages' URLs:
never a 500, and nothing changes for anyone but the link's own contact (issue 4, "Bad input";
issue 5, "Bad input and faults").

Hypothesis builds the forms: the real field names mixed with made-up ones, each value drawn
from text that breaks careless code (NUL and other control characters, CR/LF, right-to-left
marks, digits of other scripts, very long strings), sent urlencoded or as multipart, with
htmx's header or without. The link's own contact may change
(a well-formed choice is a real one); a bystander on the same lists never does.
"""

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from test_changes import add_contact
from test_changes import configure
from test_preferences import footprint
from test_preferences import manage_path
from test_preferences import read_form

from portal import consent
from portal import lists
from portal import unsubscribe
from portal.contacts import OptIn
from portal.db import db
from portal.links import make_token

#: Values that have broken form handling elsewhere: empty, NUL, line breaks, other scripts'
#: digits, a right-to-left override, HTML, a format string, very long text.
NASTY = [
    "", " ", "\x00", "\r\n", "on", "yes", "no", "²", "١٢٣", "-1", "2147483648", "9" * 400,
    "\u202e", "<script>x</script>", "%(name)s", "{{ 7*7 }}", "a" * 5000, "é", "x@y", "@",
]
VALUES = st.one_of(st.sampled_from(NASTY), st.text(max_size=80))
#: The page's own field names, the ones of the other link forms, and names nobody uses.
FIELD_NAMES = st.one_of(
    st.sampled_from([
        "csrf_token", "stamp", "rule_version", "list:news", "list:offers", "list:secret",
        "stop_marketing", "consent:partners", "consent:nope", "version:partners",
        "stop_processing", "erasure", "save", "email", "first_name", "marketing", "website",
        "list", "List-Unsubscribe", "contact_id", "opt_in_status",
    ]),
    st.text(min_size=1, max_size=30),
)
FORMS = st.dictionaries(FIELD_NAMES, VALUES, max_size=12)
FUZZ = settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def world(app):
    """A page open to everyone, two public lists and a private one, a consent; the link's owner
    and a bystander, both on the newsletter."""
    configure(policy_html="<p>We use your data only as you allow.</p>")
    news = lists.create_list("news", "Newsletter")
    lists.create_list("offers", "Offers")
    lists.create_list("secret", "Staff only", public=False)
    consent.define("partners", "custom", "Share with partners",
                   "We may share your details with our partners.")
    owner = add_contact("owner@example.com", first_name="Owner", opt_in=OptIn.SINGLE_USER)
    bystander = add_contact("bystander@example.com", first_name="By", opt_in=OptIn.SINGLE_USER)
    for person in (owner, bystander):
        lists.set_subscription(person, news, True, method="test", actor="test")
    db.session.commit()
    return owner, bystander, news


def _post(client, path, form, *, multipart, htmx):
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(path, data=form, headers=headers,
                       content_type="multipart/form-data" if multipart else None)


def _fine(response):
    # The test app propagates exceptions, so a crash fails the test by itself; a deliberate
    # answer is never a 5xx either.
    assert response.status_code < 500, response.status_code
    if response.mimetype == "text/html":
        assert "Traceback" not in response.get_data(as_text=True)


@given(form=FORMS, real=st.booleans(), multipart=st.booleans(), htmx=st.booleans())
@FUZZ
def test_the_preference_form_takes_any_input_without_touching_another_contact(
    app, client, world, form, real, multipart, htmx
):
    owner, bystander, _news = world
    before = footprint(bystander)
    path = manage_path(owner)
    if real:
        # The form as the page shows it, with the made-up fields laid over it: the token and
        # stamp are valid, so well-formed choices among them are the owner's real changes.
        page = client.get(path)
        _fine(page)
        form = {**read_form(page.get_data(as_text=True))[1], **form}
    _fine(_post(client, path, form, multipart=multipart, htmx=htmx))
    _fine(client.get(path, query_string={"list": form.get("list", "news")}))
    assert footprint(bystander) == before


@given(form=FORMS, kind=st.sampled_from(["leave", "confirm", "undo", "doi", "one-click"]),
       multipart=st.booleans())
@FUZZ
def test_every_other_link_form_takes_any_input_without_touching_another_contact(
    app, client, world, form, kind, multipart
):
    owner, bystander, news = world
    before = footprint(bystander)
    path = {
        "leave": f"{manage_path(owner)}/leave/{form.get('list', 'news') or 'news'}",
        # Validly signed links that name nothing of their contact, and one that does.
        "confirm": f"/c/{make_token('confirm', owner, p=form.get('p', 'x') or 'x')}",
        "undo": f"/u/{make_token('undo', owner, u=form.get('u', 'x') or 'x')}",
        "doi": f"/d/{make_token('doi', owner, d=form.get('d', 'x') or 'x')}",
        "one-click": f"/o/{unsubscribe.make_token(owner, news)}",
    }[kind]
    _fine(client.get(path))
    _fine(_post(client, path, form, multipart=multipart, htmx=False))
    assert footprint(bystander) == before


@given(token=st.one_of(st.sampled_from(NASTY), st.text(max_size=200)),
       prefix=st.sampled_from(["p", "c", "u", "d", "o", "t/o", "t/c"]), form=FORMS)
@FUZZ
def test_any_token_in_a_link_gets_an_answer_and_changes_nothing(
    app, client, world, token, prefix, form
):
    owner, bystander, _news = world
    before = {person.email: footprint(person) for person in (owner, bystander)}
    # A token is one path segment: a slash in it would be another route.
    path = f"/{prefix}/{token.replace('/', '_') or 'x'}"
    _fine(client.get(path))
    if not prefix.startswith("t/"):
        _fine(_post(client, path, form, multipart=False, htmx=False))
    assert {person.email: footprint(person) for person in (owner, bystander)} == before


@given(form=FORMS, slug=st.sampled_from(["news", "offers", "secret", "nope", "é", "9" * 40]),
       multipart=st.booleans())
@FUZZ
def test_the_sign_up_and_fresh_link_forms_take_any_input(app, world, form, slug, multipart):
    owner, bystander, _news = world
    before = {person.email: footprint(person) for person in (owner, bystander)}
    # A visitor from another site: no cookie, no token.
    visitor = app.test_client(use_cookies=False)
    _fine(_post(visitor, f"/f/{slug}", form, multipart=multipart, htmx=False))
    _fine(_post(visitor, "/link", form, multipart=multipart, htmx=False))
    # Any address may be signed up (that is what the form is for); a known contact's record
    # changes only through the double opt-in mail, so neither contact changes here.
    assert {person.email: footprint(person) for person in (owner, bystander)} == before


HEADER_VALUES = st.one_of(st.sampled_from([
    "", "*", "ja", "de-DE,de;q=0.9", "fr;q=abc", "en;q=-1,xx;q=2", ";;;", "q=0.5",
    "true", "false", "http://evil.example/p/x", "/p/x", "\u00e9", "a" * 2000,
    "multipart/form-data", "multipart/form-data; boundary=", "text/plain",
    "application/x-www-form-urlencoded; charset=utf-16", "application/json",
]), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
HEADERS = st.dictionaries(
    st.sampled_from(["Accept-Language", "HX-Request", "HX-Current-URL", "HX-Target",
                     "HX-Trigger", "Referer", "Origin", "User-Agent", "Content-Type",
                     "X-Forwarded-For", "Cookie"]),
    HEADER_VALUES, max_size=6,
)


@given(headers=HEADERS, body=st.sampled_from([b"", b"save=1", b"list%3Anews=on&save=1",
                                              b"List-Unsubscribe=One-Click", b"\xff\xfe=\x00"]))
@FUZZ
def test_any_headers_on_the_contacts_pages_get_an_answer(app, client, world, headers, body):
    owner, bystander, news = world
    before = footprint(bystander)
    for path in (manage_path(owner), f"/o/{unsubscribe.make_token(owner, news)}", "/link",
                 "/f/news", "/"):
        _fine(client.get(path, headers=headers))
        _fine(client.post(path, data=body, headers=headers))
    assert footprint(bystander) == before
