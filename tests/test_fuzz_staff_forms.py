"""Arbitrary input on every form of the back office, sent by a signed-in admin with a valid CSRF
token: a message or a refusal, never a 500 (the guide's standard for bad input).

The field names are the ones the back office's own pages show, mixed with made-up ones; the
values are drawn from text that breaks careless code. Whatever an example changes stays for
the next (a contact may be erased or deleted along the way): every later answer must still be
a clear one.
"""

import re
from html import unescape

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from test_backoffice_auth import csrf_token
from test_backoffice_settings import settings_data
from test_fuzz_forms import NASTY

from portal import campaigns
from portal import consent
from portal import contacts
from portal import doi
from portal import footer
from portal import lists
from portal import optin
from portal.contacts import OptIn
from portal.db import db

FUZZ = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALUES = st.one_of(st.sampled_from(NASTY), st.text(max_size=60))


@pytest.fixture
def office(app, admin_client):
    """A back office with something on every page: fields, consents, lists, contacts in every
    state, a campaign draft; returns the POST paths and the field names its pages show."""
    card = contacts.define_field("card_number", "Card number", sensitive=True, visible_suffix=4)
    contacts.define_field("sales_stage", "Sales stage")
    store_card = consent.define("store-card", "storage", "Store my card", "We keep it.",
                                field=card)
    news = lists.create_list("newsletter", "Newsletter")
    ada = contacts.add_contact("ada@example.com", first_name="Ada", region="EU",
                               method="test", actor="test")
    contacts.record_opt_in(ada, OptIn.SINGLE_USER, method="test", actor="test")
    lists.set_subscription(ada, news, True, method="test", actor="test")
    consent.decide(ada, store_card.current_version, True, method="page", actor="contact")
    contacts.set_field_value(ada, card, "4111 1111 1111 1234")
    dee = contacts.add_contact("dee@example.com", first_name="Dee", method="test", actor="test")
    contacts.stop_processing(dee, method="page", actor="contact")
    eve = contacts.add_contact("eve@example.com", first_name="Eve", method="test", actor="test")
    contacts.request_erasure(eve, method="page", actor="contact")
    campaign = campaigns.create(subject="News", text_body="Hello {{ first_name }}",
                                html_body="<p>Hello</p>", list_id=news.id, author="test")
    db.session.commit()

    pages = [
        "/staff/contacts", f"/staff/contacts/{ada.public_id}",
        f"/staff/contacts/{ada.public_id}/edit", "/staff/campaigns/new",
        f"/staff/campaigns/{campaign.id}/edit", f"/staff/campaigns/{campaign.id}/send",
        "/staff/settings", "/staff/settings/consents/new",
        f"/staff/settings/consents/{store_card.id}", "/staff/settings/lists/new",
        f"/staff/settings/lists/{news.id}", f"/staff/contacts/{eve.public_id}/erase",
        f"/staff/erasure/{eve.public_id}/extend", "/staff/jobs",
    ]
    names = set()
    token = None
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        names |= set(re.findall(r'name="([^"]+)"', response.text))
        token = token or csrf_token(response.text)
    names.discard("csrf_token")
    posts = [
        "/staff/campaigns/new", f"/staff/campaigns/{campaign.id}/edit",
        f"/staff/campaigns/{campaign.id}/send", f"/staff/campaigns/{campaign.id}/resume",
        f"/staff/jobs/{doi.PRUNE.name}", f"/staff/jobs/{doi.REMIND.name}", "/staff/jobs/nope",
        "/staff/jobs/1/resume",
        "/staff/double-opt-in", "/staff/contacts/filters", "/staff/contacts/filters/1/delete",
        "/staff/contacts/export", "/staff/settings", "/staff/settings/consents/new",
        f"/staff/settings/consents/{store_card.id}",
        f"/staff/settings/consents/{store_card.id}/retire", "/staff/settings/lists/new",
        f"/staff/settings/lists/{news.id}",
    ]
    for person in (ada, dee, eve):
        record = f"/staff/contacts/{person.public_id}"
        posts += [
            f"{record}/edit", f"{record}/email", f"{record}/reveal/card_number",
            f"{record}/reveal/nope", f"{record}/stop-processing", f"{record}/lift-restriction",
            *(f"{record}/opt-in/{event.value}" for event in optin.STAFF_EVENTS),
            f"{record}/opt-in/nope",
            f"{record}/double-opt-in", f"{record}/out-of-band",
            f"/staff/erasure/{person.public_id}/extend",
        ]
    # Erasing and deleting need nothing but the button: they go to contacts of their own, so
    # that the others stay for the rest of the examples.
    for number in range(3):
        victim = contacts.add_contact(f"victim{number}@example.com", method="test", actor="test")
        posts += [f"/staff/contacts/{victim.public_id}/erase",
                  f"/staff/contacts/{victim.public_id}/delete"]
    db.session.commit()
    gets = [
        *pages, "/staff/outbox", "/staff/mailbox", "/staff/campaigns",
        f"/staff/campaigns/{campaign.id}", f"/staff/campaigns/{campaign.id}/preview",
        f"/staff/campaigns/{campaign.id}/preview/html", "/staff/settings/preview",
        "/staff/settings/preview/page", "/staff/erasure", "/staff/sign-in",
    ]
    # The query arguments the back office reads, beside the form fields.
    names |= {"opt_in", "consent", "list", "erasure", "stopped", "q", "page", "status",
              "contact", "next", "attr-region", "attr-sales_stage", "language"}
    return {"posts": posts, "gets": gets, "names": sorted(names), "token": token}


@given(data=st.data(), multipart=st.booleans(), htmx=st.booleans())
@FUZZ
def test_every_back_office_form_answers_any_input_without_a_500(
    admin_client, office, data, multipart, htmx
):
    path = data.draw(st.sampled_from(office["posts"]), label="path")
    names = st.one_of(st.sampled_from(office["names"]), st.text(min_size=1, max_size=30))
    form = data.draw(st.dictionaries(names, VALUES, max_size=10), label="form")
    form["csrf_token"] = office["token"]
    response = admin_client.post(
        path, data=form, headers={"HX-Request": "true"} if htmx else {},
        content_type="multipart/form-data" if multipart else None,
    )
    # The test app propagates exceptions, so a crash fails the test by itself.
    assert response.status_code < 500, (path, response.status_code)


@given(data=st.data(), htmx=st.booleans())
@FUZZ
def test_every_back_office_page_answers_any_query_without_a_500(admin_client, office, data, htmx):
    path = data.draw(st.sampled_from(office["gets"]), label="path")
    names = st.one_of(st.sampled_from(office["names"]), st.text(min_size=1, max_size=30))
    query = data.draw(st.lists(st.tuples(names, VALUES), max_size=10), label="query")
    response = admin_client.get(path, query_string=query,
                                headers={"HX-Request": "true"} if htmx else {})
    assert response.status_code < 500, (path, response.status_code)


#: Pieces of Jinja that staff might write, or an attacker try: placeholders, filters, loops,
#: attribute and item access towards Python's internals, arithmetic, broken syntax, and what
#: would take the machine's memory or time but for the sandbox's budget (portal/sandbox.py).
SNIPPETS = [
    "Hello ", "{{ first_name }}", "{{ name|upper }}", "{{ fields.card_number }}",
    "{{ fields['sales_stage'] }}", "{{ fields.nope }}", "{{ email|length }}",
    "{{ 10 // first_name|length }}", "{{ first_name[0] }}", "{{ unsubscribe_url }}",
    "{% for x in fields %}{{ x }}{% endfor %}", "{% if first_name %}Hi{% else %}Hey{% endif %}",
    "{{ ''.__class__ }}", "{{ first_name.__class__.__mro__ }}", "{{ cycler }}",
    "{{ range(10**9)|list }}", "{{ 'a' * 1000 }}", "{{ 9**9**9 }}", "{{ lipsum() }}",
    "{% set x = 1 %}{{ x }}", "{{ x.y.z }}", "{{", "}}", "{%", "%}", "{#", "#}",
    "{% raw %}{{ x }}{% endraw %}", "{{ first_name|format(1) }}", "{{ '%s'|format(fields) }}",
    "<a href=\"{{ unsubscribe_url }}\">", "<script>alert(1)</script>", "\x00", "\r\n", "é",
    "{{ self }}", "{{ namespace() }}", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{{ fields|attr('items') }}", "{{ first_name|replace('a', 'b' * 1000) }}",
    "{{ 'a' * 10**9 }}", "{{ first_name|center(10**9) }}", "{{ '%1000000000s' % name }}",
    "{% set ns = namespace(x=name) %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}"
    "{% endfor %}", "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}"
    "{% endfor %}",
]
TEMPLATES = st.lists(st.sampled_from(SNIPPETS), max_size=6).map("".join)


@given(text=TEMPLATES, html=TEMPLATES, subject=TEMPLATES)
@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_campaign_template_is_saved_or_refused_and_previewed_without_a_500(
    admin_client, office, text, html, subject
):
    page = admin_client.get("/staff/campaigns/new")
    list_id = re.search(r'<option[^>]*value="(\d+)"', page.text).group(1)
    response = admin_client.post("/staff/campaigns/new", data={
        "csrf_token": office["token"], "subject": subject or "News", "list_id": list_id,
        "text_body": text or "Hello", "html_body": html, "audience-combine": "all",
    })
    assert response.status_code in (200, 303)
    if response.status_code == 303:
        shown = response.headers["Location"]
        for path in (shown, f"{shown}/preview", f"{shown}/preview/html"):
            assert admin_client.get(path).status_code < 500, path


@given(footer_source=TEMPLATES)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_footer_template_is_saved_or_refused_and_always_carries_the_link(
    admin_client, office, footer_source
):
    response = admin_client.post(
        "/staff/settings", data=settings_data(office["token"], footer_html=footer_source)
    )
    assert response.status_code in (200, 303)
    assert admin_client.get("/staff/settings").status_code == 200
    # Saved or not, the footer any such source gives never fails a mail, and always carries
    # the contact's own preference link (N4), in both parts; the impersonal one never does.
    ada = contacts.find_by_email("ada@example.com")
    text, html_part = footer.render(ada, footer_source)
    # The link's signature carries the second it was made: compare up to its payload.
    link = footer.manage_url(ada).rsplit(".", 2)[0]
    assert link in text and link in unescape(html_part)
    text, html_part = footer.render(ada, footer_source, personal=False)
    assert "/p/" not in text + unescape(html_part)
