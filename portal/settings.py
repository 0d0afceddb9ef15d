"""The consent-page settings (P3, N3, N4, M4), stored as versioned data.

Every save adds a version; the newest is in force and the older ones are the history.
"""

from datetime import datetime

import nh3
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal import rules
from portal.db import db
from portal.db import utcnow

# Staff-authored HTML is untrusted (SECURITY.md 13): only these tags survive.
ALLOWED_TAGS = {"p", "br", "strong", "em", "ul", "ol", "li", "a", "h2", "h3"}
HTML_SETTINGS = ("footer_html", "policy_html")
RULE_SETTINGS = ("audience_rule", "notification_rule")

CAMPAIGN_POLICIES = ("double", "double_single_user", "double_single_user_single_webform")

DEFAULTS = {
    "page_enabled": True,
    # Rules in the platform's rule format; None means everyone.
    "audience_rule": None,
    "notification_rule": None,
    "footer_html": "",
    "policy_html": "",
    # The policy statement in the page's languages, {language: html}; a language without one
    # shows policy_html.
    "policy_translations": {},
    # M4: Double opt-in only is the recommended default.
    "campaign_policy": "double",
}


class StaleSettings(RuntimeError):
    """Someone saved the settings since this edit began."""

    def __init__(self, current: "SettingsVersion | None"):
        # None: based on a version that was never saved (there is no settings version yet).
        super().__init__(
            f"the settings were changed (now version {current.version if current else 0})"
        )
        self.current = current


class SettingsVersion(db.Model):
    __tablename__ = "settings_versions"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    data: Mapped[dict] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(sa.String(60))
    note: Mapped[str] = mapped_column(sa.String(200), default="")


def sanitize_html(html: str) -> str:
    """Return staff-written HTML reduced to the allowed tags, with safe links only."""
    return nh3.clean(
        html or "",
        tags=ALLOWED_TAGS,
        attributes={"a": {"href"}},
        url_schemes={"https", "http", "mailto"},
        link_rel="noopener noreferrer",
    )


def current() -> SettingsVersion | None:
    """Return the settings version in force, or None before the first save."""
    return db.session.scalar(
        sa.select(SettingsVersion).order_by(SettingsVersion.version.desc()).limit(1)
    )


def values() -> dict:
    """Return the settings in force, with defaults for anything never saved."""
    latest = current()
    return {**DEFAULTS, **(latest.data if latest else {})}


def save(changes: dict, *, based_on: int, author: str, note: str = "") -> SettingsVersion:
    """Save a new version of the settings, refusing if another save came first."""
    unknown = set(changes) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    if changes.get("campaign_policy", "double") not in CAMPAIGN_POLICIES:
        raise ValueError("campaign_policy must be one of " + ", ".join(CAMPAIGN_POLICIES))

    def cleaned(name, value):
        if name in HTML_SETTINGS:
            return sanitize_html(value)
        if name == "policy_translations":
            return {language: sanitize_html(html) for language, html in sorted(value.items())
                    if html.strip()}
        if name in RULE_SETTINGS:
            # A rule naming an unknown field or a value of the wrong type is refused here
            # (RuleError names it) and nothing is saved.
            return rules.validate(value)
        return value

    changes = {name: cleaned(name, value) for name, value in changes.items()}
    latest = current()
    latest_number = latest.version if latest else 0
    if based_on != latest_number:
        raise StaleSettings(latest)
    # The primary key makes a concurrent save with the same number fail at commit.
    version = SettingsVersion(
        version=latest_number + 1, data={**values(), **changes}, created_by=author, note=note
    )
    db.session.add(version)
    db.session.flush()
    return version
