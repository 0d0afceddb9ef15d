"""The consent-page settings: versioned, refusing stale saves, with sanitised HTML."""

import pytest

from portal import settings
from portal.db import db


def test_defaults_apply_before_the_first_save(app):
    assert settings.current() is None
    assert settings.values() == settings.DEFAULTS
    assert settings.values()["campaign_policy"] == "double"


def test_each_save_adds_a_version_and_keeps_the_history(app):
    first = settings.save({"footer_html": "<p>One</p>"}, based_on=0, author="ada")
    second = settings.save({"page_enabled": False}, based_on=1, author="grace", note="pause")
    assert (first.version, second.version) == (1, 2)
    assert settings.current().version == 2
    # A save changes what it names and keeps the rest.
    assert settings.values()["footer_html"] == "<p>One</p>"
    assert settings.values()["page_enabled"] is False
    assert db.session.get(settings.SettingsVersion, 1).data["page_enabled"] is True
    assert (second.created_by, second.note) == ("grace", "pause")


def test_a_stale_save_is_refused(app):
    settings.save({"footer_html": "<p>Mine</p>"}, based_on=0, author="ada")
    with pytest.raises(settings.StaleSettings) as stale:
        settings.save({"footer_html": "<p>Theirs</p>"}, based_on=0, author="grace")
    assert stale.value.current.version == 1
    assert settings.values()["footer_html"] == "<p>Mine</p>"
    assert settings.current().version == 1


def test_a_save_based_on_a_future_version_is_refused(app):
    with pytest.raises(settings.StaleSettings, match="now version 0"):
        settings.save({"page_enabled": False}, based_on=3, author="ada")
    settings.save({"page_enabled": False}, based_on=0, author="ada")
    with pytest.raises(settings.StaleSettings, match="now version 1"):
        settings.save({"page_enabled": True}, based_on=2, author="ada")


@pytest.mark.parametrize("name", ["policy_html", "footer_html"])
def test_staff_html_is_sanitised(app, name):
    html = (
        "<h2>Your data</h2><p onclick='steal()'>Kept <strong>safe</strong>.</p>"
        "<script>alert('x')</script><img src=x onerror=alert(1)>"
        '<a href="javascript:alert(1)">bad</a> <a href="https://example.com/privacy">good</a>'
        "<iframe src='https://evil.example'></iframe>"
    )
    saved = settings.save({name: html}, based_on=0, author="ada").data[name]
    assert "<script" not in saved
    assert "alert" not in saved
    assert "onclick" not in saved
    assert "<img" not in saved
    assert "<iframe" not in saved
    assert "javascript:" not in saved
    assert "<h2>Your data</h2>" in saved
    assert "<strong>safe</strong>" in saved
    assert 'href="https://example.com/privacy"' in saved


def test_an_unknown_setting_is_refused(app):
    with pytest.raises(ValueError, match="unknown settings: colour"):
        settings.save({"colour": "red"}, based_on=0, author="ada")
    assert settings.current() is None


def test_an_unknown_campaign_policy_is_refused(app):
    with pytest.raises(ValueError, match="campaign_policy"):
        settings.save({"campaign_policy": "single"}, based_on=0, author="ada")


def test_a_recommended_or_wider_campaign_policy_is_accepted(app):
    for number, policy in enumerate(settings.CAMPAIGN_POLICIES):
        settings.save({"campaign_policy": policy}, based_on=number, author="ada")
        assert settings.values()["campaign_policy"] == policy


def test_a_rule_naming_an_unknown_field_is_refused_with_the_field_named(app):
    from portal.rules import RuleError

    with pytest.raises(RuleError, match="salse_stage"):
        settings.save({"audience_rule": {"field": "salse_stage", "op": "equals", "value": "x"}},
                      based_on=0, author="t")
    assert settings.current() is None
