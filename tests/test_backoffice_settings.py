"""The consent-page settings in the back office (S2, S3, P3, N3, N4, M4): admins only, every
change versioned, rules with live counts, concurrent saves, and the preview."""

import re

import pytest
import sqlalchemy as sa
from conftest import staff_browser
from flask import url_for
from test_backoffice_auth import csrf_token

from portal import consent
from portal import contacts
from portal import lists
from portal import settings
from portal.catalogue import CatalogueEdit
from portal.consent import ConsentDefinition
from portal.db import db
from portal.links import make_token


@pytest.fixture
def second_admin(app):
    return staff_browser(app, "grace@example.com", "admin")


@pytest.fixture
def people(app):
    made = {
        "eu1": contacts.add_contact(
            "ada@example.com", region="EU", first_name="Ada", method="staff", actor="test"
        ),
        "eu2": contacts.add_contact("bea@example.com", region="eu ", method="staff", actor="test"),
        "us": contacts.add_contact(
            "cal@example.com", region="US", first_name="Cal", method="staff", actor="test"
        ),
    }
    db.session.commit()
    return made


def settings_data(token, **overrides):
    """What the settings form posts when an admin changes the given fields."""
    values = settings.values()
    latest = settings.current()
    data = {
        "csrf_token": token,
        "based_on": str(latest.version if latest else 0),
        "footer_html": values["footer_html"],
        "policy_html": values["policy_html"],
        "campaign_policy": values["campaign_policy"],
        "note": "",
        "audience-combine": "all",
        "notification-combine": "all",
    }
    if values["page_enabled"]:
        data["page_enabled"] = "y"
    data.update(overrides)
    return {name: value for name, value in data.items() if value is not None}


def based_on(html) -> str:
    return re.search(r'name="based_on" type="hidden" value="(\d+)"', html).group(1)


def error_next_to(html, field_id):
    match = re.search(rf'id="{re.escape(field_id)}-error">(.*?)</p>', html, re.S)
    return match.group(1) if match else None


def test_the_settings_area_is_for_admins_only(app, agent_client, admin_client, people):
    definition = consent.define("partners", "custom", "Partners", "Share with partners")
    mailing_list = lists.create_list("news", "News")
    db.session.commit()
    urls = [
        "/staff/settings",
        "/staff/settings/history",
        "/staff/settings/preview",
        "/staff/settings/preview/page?region=EU",
        "/staff/settings/consents/new",
        f"/staff/settings/consents/{definition.id}",
        f"/staff/settings/consents/{definition.id}/retire",
        "/staff/settings/lists/new",
        f"/staff/settings/lists/{mailing_list.id}",
    ]
    token = csrf_token(agent_client.get("/staff/jobs").text)
    assert "/staff/settings" not in agent_client.get("/staff/").text  # no nav link either
    for url in urls:
        response = agent_client.get(url)
        assert response.status_code == 403, url
        assert "You may not open this page" in response.text
        if "preview" not in url and "history" not in url:
            assert agent_client.post(url, data={"csrf_token": token}).status_code == 403, url
        assert admin_client.get(url).status_code == 200, url
    assert settings.current() is None
    assert definition.retired_at is None
    assert 'href="/staff/settings"' in admin_client.get("/staff/").text


def test_every_settings_url_refuses_agents_and_takes_an_empty_post_from_admins(
    app, agent_client, admin_client
):
    definition = consent.define("partners", "custom", "Partners", "Share with partners")
    mailing_list = lists.create_list("news", "News")
    db.session.commit()
    ids = {"consent_id": definition.id, "list_id": mailing_list.id}
    rules = [
        rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("backoffice.") and "/settings" in rule.rule
    ]
    assert len(rules) == 9
    agent_token = csrf_token(agent_client.get("/staff/jobs").text)
    admin_token = csrf_token(admin_client.get("/staff/jobs").text)
    for rule in rules:
        with app.test_request_context():
            url = url_for(rule.endpoint, **{name: ids[name] for name in rule.arguments})
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            refused = agent_client.open(url, method=method, data={"csrf_token": agent_token})
            assert refused.status_code == 403, (url, method)
            answered = admin_client.open(url, method=method, data={"csrf_token": admin_token})
            assert answered.status_code in (200, 303, 404), (url, method)
    # The empty posts saved nothing, and only the retire form (which asks nothing) acted.
    assert settings.current() is None
    assert [edit.action for edit in db.session.scalars(sa.select(CatalogueEdit))] == ["retired"]


def test_an_admin_saves_the_settings_and_the_history_shows_who_and_what(admin_client, app):
    page = admin_client.get("/staff/settings")
    assert re.search(
        r'checked id="campaign_policy-0"[^>]*value="double"', page.text
    )  # M4's default
    assert "legally safest choice" in page.text  # the source's advice beside the choice
    response = admin_client.post(
        "/staff/settings",
        data=settings_data(
            csrf_token(page.text),
            page_enabled=None,
            note="summer pause",
            **{
                "audience-rows-0-field": "region",
                "audience-rows-0-op": "in",
                "audience-rows-0-value": "EU, UK",
                "footer_html": "<p>Acme Ltd</p>",
                "policy_html": "<p onclick='x()'>We keep <strong>little</strong></p>"
                "<script>alert(1)</script>",
            },
        ),
    )
    assert response.status_code == 303
    saved = settings.values()
    assert saved["page_enabled"] is False
    assert saved["audience_rule"] == {"field": "region", "op": "in", "value": ["EU", "UK"]}
    assert saved["policy_html"] == "<p>We keep <strong>little</strong></p>"

    again = admin_client.get("/staff/settings")
    assert "The settings are saved as version 1." in again.text
    # The saved, sanitised HTML is shown back as it will appear.
    assert "<div><p>We keep <strong>little</strong></p></div>" in again.text
    assert "alert(1)" not in again.text
    assert 'name="audience-rows-0-value" type="text" value="EU, UK"' in again.text

    history = admin_client.get("/staff/settings/history").text
    assert "admin@example.com" in history
    assert "summer pause" in history
    assert "region is one of EU, UK" in history
    assert "Page enabled" in history


def test_saving_without_a_change_adds_no_version(admin_client):
    page = admin_client.get("/staff/settings")
    response = admin_client.post(
        "/staff/settings", data=settings_data(csrf_token(page.text)), follow_redirects=True
    )
    assert "Nothing changed." in response.text
    assert settings.current() is None


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"field": "salse_stage", "op": "equals", "value": "x"}, "unknown field 'salse_stage'"),
        ({"field": "opt_in_status", "op": "equals", "value": "maybe"}, "is not one of"),
        ({"field": "region", "op": "equals", "value": " "}, "needs a non-empty value"),
        ({"field": "region", "op": "sounds_like", "value": "EU"}, "unknown operator"),
    ],
)
def test_a_bad_rule_is_shown_next_to_its_row_and_nothing_is_saved(admin_client, row, message):
    page = admin_client.get("/staff/settings")
    data = settings_data(
        csrf_token(page.text),
        page_enabled=None,
        **{f"notification-rows-0-{key}": value for key, value in row.items()},
    )
    response = admin_client.post("/staff/settings", data=data)
    assert response.status_code == 200
    error = error_next_to(response.text, "notification-rows-0-value")
    assert error is not None and message in error.replace("&#39;", "'")
    assert 'aria-invalid="true"' in response.text
    assert settings.current() is None  # the page_enabled change was not saved either


def test_the_count_button_counts_in_sql_without_and_with_htmx(admin_client, people):
    page = admin_client.get("/staff/settings")
    assert "Press “Count”" in page.text
    assert 'hx-post="/staff/settings"' in page.text
    data = settings_data(
        csrf_token(page.text),
        count="audience",
        **{
            "audience-rows-0-field": "region",
            "audience-rows-0-op": "equals",
            "audience-rows-0-value": "EU",
        },
    )
    plain = admin_client.post("/staff/settings", data=data)
    assert plain.status_code == 200
    assert "<html" in plain.text
    assert "2 contacts match this rule." in plain.text  # "EU" and "eu " alike
    assert settings.current() is None  # counting saves nothing

    fragment = admin_client.post("/staff/settings", data=data, headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert "HX-Request" in fragment.headers["Vary"]
    assert fragment.text == "2 contacts match this rule."  # the output's text, swapped into it

    data.update(
        {
            "audience-rows-1-field": "first_name",
            "audience-rows-1-op": "not_empty",
            "audience-combine": "any",
        }
    )
    fragment = admin_client.post("/staff/settings", data=data, headers={"HX-Request": "true"})
    assert "3 contacts match this rule." in fragment.text  # EU, or a first name (Cal)

    no_rule = settings_data(csrf_token(page.text), count="notification")
    fragment = admin_client.post("/staff/settings", data=no_rule, headers={"HX-Request": "true"})
    assert "3 contacts match this rule." in fragment.text  # no condition: everyone

    bad = settings_data(
        csrf_token(page.text),
        count="audience",
        **{
            "audience-rows-0-field": "nope",
            "audience-rows-0-op": "equals",
            "audience-rows-0-value": "EU",
        },
    )
    fragment = admin_client.post("/staff/settings", data=bad, headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert "Not counted: unknown field" in fragment.text.replace("&#39;", "'")


def test_the_second_of_two_admins_sees_what_changed_and_loses_nothing(admin_client, second_admin):
    mine = admin_client.get("/staff/settings")
    theirs = second_admin.get("/staff/settings")
    assert (
        second_admin.post(
            "/staff/settings",
            data=settings_data(
                csrf_token(theirs.text),
                footer_html="<p>Theirs</p>",
                campaign_policy="double_single_user",
                note="their note",
            ),
        ).status_code
        == 303
    )

    # The first admin's form was based on version 0.
    data = settings_data(
        csrf_token(mine.text),
        based_on="0",
        footer_html="<p>Mine</p>",
        policy_html="<p>My policy</p>",
    )
    response = admin_client.post("/staff/settings", data=data)
    assert response.status_code == 200
    text = response.text
    assert "Someone else saved the settings while you were editing" in text
    assert "grace@example.com" in text
    assert "their note" in text
    assert "Email footer" in text and "&lt;p&gt;Theirs&lt;/p&gt;" in text
    # Nothing of theirs was overwritten, and nothing of mine was lost: it is in the form.
    assert settings.values()["footer_html"] == "<p>Theirs</p>"
    assert "&lt;p&gt;My policy&lt;/p&gt;</textarea>" in text
    assert 'name="based_on" type="hidden" value="1"' in text
    # Both changed the footer: the form keeps mine and says so. Only they changed the policy:
    # the form takes theirs, so saving again does not undo it.
    assert "You both changed: Email footer." in text
    assert "&lt;p&gt;Mine&lt;/p&gt;</textarea>" in text
    assert re.search(r'checked id="campaign_policy-1"[^>]*value="double_single_user"', text)
    data["campaign_policy"] = "double_single_user"  # as the browser sends the form back

    data["based_on"] = "1"
    assert admin_client.post("/staff/settings", data=data).status_code == 303
    assert settings.values()["footer_html"] == "<p>Mine</p>"
    assert settings.values()["policy_html"] == "<p>My policy</p>"
    assert settings.values()["campaign_policy"] == "double_single_user"
    assert settings.current().version == 2


def test_an_admin_defines_a_consent_with_a_condition_and_edits_its_wording(admin_client, people):
    page = admin_client.get("/staff/settings/consents/new")
    token = csrf_token(page.text)
    response = admin_client.post(
        "/staff/settings/consents/new",
        data={
            "csrf_token": token,
            "kind": "custom",
            "title": "Share with <b>partners</b>",
            "text": "We pass your details<script>x</script>",
            "condition-combine": "all",
            "condition-rows-0-field": "region",
            "condition-rows-0-op": "equals",
            "condition-rows-0-value": "EU",
            "default_selected": "y",
        },
    )
    assert response.status_code == 303
    definition = db.session.scalar(sa.select(ConsentDefinition))
    assert definition.slug == "share-with-partners"
    assert definition.current_version.title == "Share with partners"  # markup neutralised
    assert definition.current_version.text == "We pass your details"
    assert definition.display_condition == {"field": "region", "op": "equals", "value": "EU"}
    assert definition.default_selected is True

    edit_url = f"/staff/settings/consents/{definition.id}"
    page = admin_client.get(edit_url)
    response = admin_client.post(
        edit_url,
        data={
            "csrf_token": csrf_token(page.text),
            "based_on": based_on(page.text),
            "title": "Share with partners",
            "text": "We pass your name and email to partners.",
            "material": "y",
            "condition-combine": "all",
            "condition-rows-0-field": "region",
            "condition-rows-0-op": "equals",
            "condition-rows-0-value": "EU",
        },
    )
    assert response.status_code == 303
    db.session.expire_all()
    assert [v.number for v in definition.versions] == [1, 2]
    assert definition.versions[0].text == "We pass your details"  # the old wording stays
    assert definition.current_version.material is True
    assert definition.default_selected is False  # the box was left unticked

    page = admin_client.get(edit_url).text
    assert "We pass your name and email to partners." in page
    assert "We pass your details" in page  # version 1 in the versions table
    history = admin_client.get("/staff/settings/history").text
    assert "share-with-partners" in history and "created" in history and "edited" in history


def test_a_storage_consent_needs_a_sensitive_field(admin_client):
    card = contacts.define_field("card_number", "Card number", sensitive=True)
    db.session.commit()
    page = admin_client.get("/staff/settings/consents/new")
    data = {
        "csrf_token": csrf_token(page.text),
        "kind": "storage",
        "title": "Keep my card",
        "text": "We store your card number.",
        "condition-combine": "all",
    }
    response = admin_client.post("/staff/settings/consents/new", data=data)
    assert response.status_code == 200
    assert "Choose the sensitive field" in error_next_to(response.text, "field")
    assert db.session.scalar(sa.select(ConsentDefinition)) is None
    data["field"] = str(card.id)
    assert admin_client.post("/staff/settings/consents/new", data=data).status_code == 303
    assert db.session.scalar(sa.select(ConsentDefinition)).field_id == card.id


def test_retiring_a_consent_asks_first(admin_client):
    definition = consent.define("partners", "custom", "Partners", "Share with partners")
    db.session.commit()
    url = f"/staff/settings/consents/{definition.id}/retire"
    page = admin_client.get(url)
    assert "Retire “Partners”?" in page.text
    assert definition.retired_at is None
    assert admin_client.post(url, data={"csrf_token": csrf_token(page.text)}).status_code == 303
    db.session.expire_all()
    assert definition.retired_at is not None
    assert "retired" in admin_client.get("/staff/settings").text


def test_concurrent_consent_edits_show_what_changed(admin_client, second_admin):
    definition = consent.define("partners", "custom", "Partners", "Share with partners")
    db.session.commit()
    url = f"/staff/settings/consents/{definition.id}"
    mine, theirs = admin_client.get(url).text, second_admin.get(url).text
    base = {"title": "Partners", "condition-combine": "all"}
    assert (
        second_admin.post(
            url,
            data={**base, "csrf_token": csrf_token(theirs), "based_on": "0", "text": "Their text"},
        ).status_code
        == 303
    )
    response = admin_client.post(
        url, data={**base, "csrf_token": csrf_token(mine), "based_on": "0", "text": "My text"}
    )
    assert response.status_code == 200
    assert "Someone else changed this while you were editing" in response.text
    assert "grace@example.com" in response.text and "Their text" in response.text
    assert "My text</textarea>" in response.text
    db.session.expire_all()
    assert definition.current_version.text == "Their text"


def test_mailing_lists_are_created_and_edited(admin_client):
    page = admin_client.get("/staff/settings/lists/new")
    response = admin_client.post(
        "/staff/settings/lists/new",
        data={
            "csrf_token": csrf_token(page.text),
            "based_on": "0",
            "name": "Product <i>news</i>",
            "description": "Once a month",
            "public": "y",
        },
    )
    assert response.status_code == 303
    mailing_list = db.session.scalar(sa.select(lists.MailingList))
    assert (mailing_list.slug, mailing_list.name, mailing_list.public) == (
        "product-news",
        "Product news",
        True,
    )
    url = f"/staff/settings/lists/{mailing_list.id}"
    page = admin_client.get(url)
    response = admin_client.post(
        url,
        data={
            "csrf_token": csrf_token(page.text),
            "based_on": based_on(page.text),
            "name": "Product news",
            "description": "Twice a month",
        },
    )
    assert response.status_code == 303
    db.session.expire_all()
    assert (mailing_list.description, mailing_list.public) == ("Twice a month", False)
    edits = db.session.scalars(sa.select(CatalogueEdit).order_by(CatalogueEdit.id)).all()
    assert [edit.action for edit in edits] == ["created", "edited"]
    assert edits[1].changes == {
        "description": ["Once a month", "Twice a month"],
        "public": [True, False],
    }
    page = admin_client.get(url)
    empty = admin_client.post(
        url, data={"csrf_token": csrf_token(page.text), "based_on": based_on(page.text), "name": ""}
    )
    assert "This field is required." in error_next_to(empty.text, "name")


def _unify(html: str, token: str) -> str:
    """The page with its link token and CSRF tokens replaced by placeholders."""
    html = html.replace(token, "preview")
    return re.sub(r'name="csrf_token" value="[^"]+"', 'name="csrf_token" value="-"', html)


def test_the_preview_renders_the_same_html_as_the_real_page(app, admin_client, client, people):
    contact = people["eu1"]
    contact.language = "de"
    mailing_list = lists.create_list("news", "News", "Monthly")
    partners = consent.define(
        "partners",
        "custom",
        "Partners",
        "Share with partners",
        display_condition={"field": "region", "op": "equals", "value": "EU"},
    )
    consent.define("tracking", "tracking", "Tracking", "Count my opens", default_selected=True)
    lists.set_subscription(contact, mailing_list, True, method="staff", actor="test")
    consent.decide(contact, partners.current_version, True, method="staff", actor="test")
    settings.save({"policy_html": "<p>Our policy</p>"}, based_on=0, author="test")
    db.session.commit()

    token = make_token("manage", contact)
    real = client.get(f"/p/{token}")
    assert real.status_code == 200
    preview = admin_client.get(f"/staff/settings/preview/page?contact={contact.email}")
    assert preview.status_code == 200
    assert "Partners" in preview.text and "Our policy" in preview.text
    assert 'lang="de"' in preview.text
    assert _unify(preview.text, token) == _unify(real.text, token)

    # The same by public id, and the same for a contact outside the audience.
    by_id = admin_client.get(f"/staff/settings/preview/page?contact={contact.public_id}")
    assert by_id.text == preview.text
    outsider = people["us"]
    token = make_token("manage", outsider)
    real = client.get(f"/p/{token}")
    preview = admin_client.get(f"/staff/settings/preview/page?contact={outsider.public_id}")
    assert "Partners" not in preview.text
    assert _unify(preview.text, token) == _unify(real.text, token)


def test_the_preview_frame_cannot_submit_anything_as_the_contact(admin_client, people):
    contact = people["eu1"]
    response = admin_client.get(f"/staff/settings/preview/page?contact={contact.email}")
    policy = response.headers["Content-Security-Policy"]
    assert "sandbox" in policy and "form-action 'none'" in policy
    assert "allow-forms" not in policy and "script-src" not in policy
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    # No working link: the form points at a placeholder, not at a token for the contact.
    assert 'action="/p/preview"' in response.text
    assert admin_client.post("/p/preview", data={"stop_marketing": "on"}).status_code == 404


def test_the_preview_page_marks_the_frame_and_says_what_the_contact_sees(admin_client, people):
    consent.define(
        "partners",
        "custom",
        "Partners",
        "Share with partners",
        display_condition={"field": "region", "op": "equals", "value": "EU"},
    )
    settings.save(
        {"audience_rule": {"field": "region", "op": "in", "value": ["EU", "US"]}},
        based_on=0,
        author="test",
    )
    db.session.commit()
    inside = admin_client.get("/staff/settings/preview?region=EU&kind=lead&opt_in_status=none").text
    assert "Preview only: the forms in this frame are disabled" in inside
    assert "Consents asked: Partners." in inside
    assert '<iframe class="preview-frame"' in inside and "sandbox" in inside
    frame = admin_client.get(
        "/staff/settings/preview/page?region=EU&kind=lead&opt_in_status=none&first_name=Zoe"
    ).text
    assert "Hello Zoe." in frame and "Share with partners" in frame

    us = admin_client.get("/staff/settings/preview?region=US&kind=lead&opt_in_status=none").text
    assert "No consent is asked." in us
    outside = admin_client.get(
        "/staff/settings/preview?region=JP&kind=lead&opt_in_status=none"
    ).text
    assert "only the email options are shown" in outside
    # A typed-in contact exists only in memory.
    assert db.session.scalar(sa.select(sa.func.count(contacts.Contact.id))) == 3


def test_the_preview_of_an_unknown_contact_says_so(admin_client):
    response = admin_client.get("/staff/settings/preview?contact=nobody@example.com")
    assert response.status_code == 200
    assert "No contact has this email address or public id." in error_next_to(
        response.text, "contact"
    )
    assert admin_client.get("/staff/settings/preview/page?contact=nobody").status_code == 404
    bad = admin_client.get("/staff/settings/preview?opt_in_status=forever")
    assert bad.status_code == 200
    assert error_next_to(bad.text, "opt_in_status") == "Choose one of the offered values."
    assert '<select aria-describedby="opt_in_status-error" aria-invalid="true"' in bad.text


def test_a_nested_rule_the_rows_cannot_show_is_kept_as_it_is(admin_client):
    nested = {
        "all": [
            {
                "any": [
                    {"field": "region", "op": "equals", "value": "EU"},
                    {"field": "language", "op": "equals", "value": "de"},
                ]
            },
            {"field": "kind", "op": "equals", "value": "lead"},
        ]
    }
    settings.save({"audience_rule": nested}, based_on=0, author="cli")
    db.session.commit()
    page = admin_client.get("/staff/settings").text
    assert "nested groups" in page
    kept = re.search(r'name="audience-nested" type="hidden" value="([^"]*)"', page).group(1)
    data = settings_data(
        csrf_token(page),
        footer_html="<p>New footer</p>",
        **{"audience-nested": kept.replace("&#34;", '"')},
    )
    assert admin_client.post("/staff/settings", data=data).status_code == 303
    assert settings.values()["audience_rule"] == nested
    assert settings.values()["footer_html"] == "<p>New footer</p>"


@pytest.mark.parametrize(
    ("nested", "message"),
    [
        ("not json", "came back from the form damaged, so nothing is saved"),
        ("[" * 100_000, "came back from the form damaged"),  # json gives up: too deep
        ("1" * 5000, "came back from the form damaged"),  # json gives up: too many digits
        ("null", "came back from the form damaged"),  # not "everyone"
        ("[]", "came back from the form damaged"),
        ("42", "came back from the form damaged"),
        ('"region = EU"', "came back from the form damaged"),
        ('{"all": "x"}', "cannot be used: 'all' takes a non-empty list of rules, not text"),
        ('{"any": [{"field": "region"}], "x": 1}', "cannot be used: a group has the one key"),
        ('{"field": "region", "op": "equals", "value": "EU", "and": 1}', "unexpected key 'and'"),
        ('{"field": "region", "op": "equals", "value": "\\ud800"}', "half a character"),
    ],
)
def test_a_damaged_nested_rule_is_refused_beside_the_rule_and_never_fails(
    admin_client, people, nested, message
):
    page = admin_client.get("/staff/settings")
    data = settings_data(csrf_token(page.text), note="n", **{"audience-nested": nested})
    response = admin_client.post("/staff/settings", data=data)
    assert response.status_code == 200
    error = error_next_to(response.text, "audience-nested").replace("&#39;", "'")
    assert message in error
    assert "Expecting value" not in error and "Exceeds the limit" not in error
    assert 'id="rule-audience" aria-describedby="audience-nested-error"' in response.text
    assert settings.current() is None
    # Its Count says why there is no number, and never fails either.
    counted = admin_client.post(
        "/staff/settings", data={**data, "count": "audience"}, headers={"HX-Request": "true"}
    )
    assert counted.status_code == 200
    assert "Not counted: The rule with nested groups" in counted.text


def test_a_value_a_choice_does_not_offer_is_refused_beside_its_field(admin_client):
    page = admin_client.get("/staff/settings")
    data = settings_data(
        csrf_token(page.text),
        campaign_policy="everyone",
        **{"audience-combine": "both", "audience-rows-0-field": "region",
           "audience-rows-0-op": "equals", "audience-rows-0-value": "EU"},
    )
    response = admin_client.post("/staff/settings", data=data)
    assert response.status_code == 200
    for field in ("campaign_policy", "audience-combine"):
        assert error_next_to(response.text, field) == "Choose one of the offered values."
        # Every option of the group is marked and points at the message.
        options = re.findall(rf'<input[^>]*id="{field}-\d"[^>]*>', response.text)
        assert options and all('aria-invalid="true"' in option for option in options)
        assert all(f"{field}-error" in option for option in options)
    assert 'aria-describedby="policy-advice campaign_policy-error"' in response.text
    assert "Not a valid choice" not in response.text
    assert settings.current() is None

    page = admin_client.get("/staff/settings/consents/new")
    response = admin_client.post(
        "/staff/settings/consents/new",
        data={"csrf_token": csrf_token(page.text), "kind": "secret", "title": "T", "text": "X",
              "condition-combine": "all"},
    )
    assert response.status_code == 200
    assert error_next_to(response.text, "kind") == "Choose one of the offered values."
    assert re.search(r'<select aria-describedby="kind-error" aria-invalid="true"', response.text)
    assert db.session.scalar(sa.select(ConsentDefinition)) is None


def test_the_consent_form_counts_its_condition_with_htmx(admin_client, people):
    page = admin_client.get("/staff/settings/consents/new")
    assert 'hx-post="/staff/settings/consents/new"' in page.text
    data = {
        "csrf_token": csrf_token(page.text),
        "count": "condition",
        "condition-combine": "all",
        "condition-rows-0-field": "region",
        "condition-rows-0-op": "not_equals",
        "condition-rows-0-value": "EU",
    }
    fragment = admin_client.post(
        "/staff/settings/consents/new", data=data, headers={"HX-Request": "true"}
    )
    assert fragment.text == "1 contact matches this rule."  # the output's text, swapped into it
    plain = admin_client.post("/staff/settings/consents/new", data=data)
    assert "<html" in plain.text and "1 contact matches this rule." in plain.text
    assert db.session.scalar(sa.select(ConsentDefinition)) is None


def test_a_typed_in_custom_value_decides_what_the_preview_shows(admin_client, people):
    stage = contacts.define_field("sales_stage", "Sales stage")
    consent.define(
        "card",
        "custom",
        "Keep my card",
        "We keep your card number.",
        display_condition={"field": "sales_stage", "op": "equals", "value": "ready to buy"},
    )
    db.session.commit()
    form = admin_client.get("/staff/settings/preview").text
    assert 'name="attr-sales_stage"' in form
    ready = admin_client.get(
        "/staff/settings/preview?kind=lead&opt_in_status=none&attr-sales_stage=ready+to+buy"
    )
    assert "Consents asked: Keep my card." in ready.text
    frame = admin_client.get(
        "/staff/settings/preview/page?kind=lead&opt_in_status=none&attr-sales_stage=ready+to+buy"
    )
    assert "We keep your card number." in frame.text
    browsing = admin_client.get(
        "/staff/settings/preview/page?kind=lead&opt_in_status=none&attr-sales_stage=browsing"
    )
    assert "We keep your card number." not in browsing.text
    # The typed-in contact was held only for the length of the page.
    assert db.session.scalar(sa.select(sa.func.count(contacts.Contact.id))) == 3
    assert (
        db.session.scalar(
            sa.select(sa.func.count(contacts.FieldValue.id)).where(
                contacts.FieldValue.field_id == stage.id
            )
        )
        == 0
    )


def test_an_id_beyond_any_row_is_a_404(admin_client):
    for url in (
        "/staff/settings/consents/99999999999",
        "/staff/settings/lists/99999999999",
        "/staff/settings/consents/99999999999/retire",
    ):
        assert admin_client.get(url).status_code == 404


@pytest.mark.parametrize("stamp", ["99999999999", "-1", "x"])
def test_a_mangled_version_stamp_asks_for_a_reload(admin_client, stamp):
    page = admin_client.get("/staff/settings")
    response = admin_client.post(
        "/staff/settings", data=settings_data(csrf_token(page.text), based_on=stamp, note="n")
    )
    assert response.status_code == 200
    assert "This form is incomplete. Reload the page" in response.text
    assert settings.current() is None


# What a keyboard or screen-reader user meets in the forms.


def test_each_language_row_is_written_in_its_language(admin_client):
    # A screen reader reads the German wording with a German voice, and a browser checks its
    # spelling in German, only when the field says which language it holds.
    consent.define("news", "custom", "News", "We write.")
    db.session.commit()
    definition = db.session.scalar(sa.select(ConsentDefinition))
    pages = {
        "/staff/settings": ("policy_wordings-{}-html",),
        "/staff/settings/consents/new": ("wordings-{}-title", "wordings-{}-text"),
        f"/staff/settings/consents/{definition.id}": ("wordings-{}-title", "wordings-{}-text"),
        "/staff/settings/lists/new": ("wordings-{}-name", "wordings-{}-description"),
    }
    for path, fields in pages.items():
        page = admin_client.get(path).text
        for index, language in enumerate(["en", "de", "fr", "ja"]):
            for field in fields:
                control = re.search(rf'<(?:input|textarea)[^>]*id="{field.format(index)}"[^>]*>',
                                    page)
                assert f'lang="{language}"' in control.group(0), (path, control.group(0))


def test_count_fills_its_output_which_stays_in_place(admin_client):
    # The <output> is a live region: swapping its content in (not the element) gets it read.
    consent.define("news", "custom", "News", "We write.")
    db.session.commit()
    definition = db.session.scalar(sa.select(ConsentDefinition))
    for path, name in (("/staff/settings", "audience"),
                       ("/staff/settings/consents/new", "condition"),
                       (f"/staff/settings/consents/{definition.id}", "condition")):
        page = admin_client.get(path).text
        button = re.search(rf'<button [^>]*value="{name}"[^>]*>', page, re.S).group(0)
        assert f'hx-target="#count-{name}" hx-swap="innerHTML"' in button, path
        assert re.search(rf'<output id="count-{name}"[^>]*aria-live="polite"', page), path
