"""A campaign's audience, in SQL: who on its list receives it, and why the others do not.

The audience is the list's subscribed members whose opt-in status the campaign policy admits,
whose processing is not stopped, who neither asked for erasure nor were erased, who have an
address, and who match the campaign's audience rule, if it has one (rules.py's SQL). The
audience query stays a plain join with these conditions, as fast as the bare SQL; why the other
members are left out is counted by a query of its own beside it.
"""

import sqlalchemy as sa

from portal import gate
from portal import rules
from portal import settings
from portal.contacts import OPT_OUTS
from portal.contacts import Contact
from portal.db import db
from portal.lists import Subscription

#: Why a member of the list is left out of the audience, each member counted under the first
#: that applies (see audience_breakdown).
LEFT_OUT = (
    "erased",
    "erasure_requested",
    "processing_stopped",
    "no_address",
    "opted_out",
    "policy",
    "rule",
)


def _statuses(policy: str) -> list[str]:
    return sorted(status.value for status in gate.POLICY_STATUSES[policy])


def audience_conditions(
    list_id: int, policy: str, rule: dict | None = None
) -> list[sa.ColumnElement[bool]]:
    """Return the SQL conditions of a campaign's audience (a join of contacts and subscriptions).

    A plain IN on the status column, not a rules.where_clause: the statuses are exact values of
    a checked column, and the bare comparison lets the database use it as it is. The audience
    rule, if any, is the rules' own SQL (raising RuleError if it no longer holds).
    """
    conditions = [
        Subscription.contact_id == Contact.id,
        Subscription.list_id == list_id,
        Subscription.status == "subscribed",
        Contact.opt_in_status.in_(_statuses(policy)),
        Contact.processing_stopped_at.is_(None),
        Contact.erasure_requested_at.is_(None),
        Contact.erased_at.is_(None),
        Contact.email.is_not(None),
    ]
    if rule is not None:
        conditions.append(rules.where_clause(rule))
    return conditions


def audience_count(list_id: int, policy: str | None = None, rule: dict | None = None) -> int:
    """Return how many contacts a campaign to this list would go to under the policy."""
    policy = policy or settings.values()["campaign_policy"]
    statement = (
        sa.select(sa.func.count())
        .select_from(Contact)
        .join(Subscription, sa.true())
        .where(*audience_conditions(list_id, policy, rule))
    )
    return db.session.scalar(statement)


def audience_breakdown(list_id: int, policy: str | None = None, rule: dict | None = None) -> dict:
    """Return {"audience": n, "left_out": {reason: n}} over the list's subscribed members.

    One GROUP BY in SQL, beside the audience query rather than inside it: each member who
    fails a condition of `audience_conditions` counts under the first reason of LEFT_OUT that
    applies, the others make the audience.
    """
    policy = policy or settings.values()["campaign_policy"]
    cases = [
        (Contact.erased_at.is_not(None), "erased"),
        (Contact.erasure_requested_at.is_not(None), "erasure_requested"),
        (Contact.processing_stopped_at.is_not(None), "processing_stopped"),
        (Contact.email.is_(None), "no_address"),
        (Contact.opt_in_status.in_([status.value for status in OPT_OUTS]), "opted_out"),
        (Contact.opt_in_status.not_in(_statuses(policy)), "policy"),
    ]
    if rule is not None:
        # The rules' SQL never yields NULL (values are coalesced or tested under EXISTS).
        cases.append((sa.not_(rules.where_clause(rule)), "rule"))
    members = (
        sa.select(sa.case(*cases, else_=sa.null()).label("reason"))
        .select_from(Contact)
        .join(Subscription, Subscription.contact_id == Contact.id)
        .where(Subscription.list_id == list_id, Subscription.status == "subscribed")
        .subquery()
    )
    found = dict(
        db.session.execute(
            sa.select(members.c.reason, sa.func.count()).group_by(members.c.reason)
        ).all()
    )
    return {
        "audience": found.pop(None, 0),
        "left_out": {reason: found[reason] for reason in LEFT_OUT if found.get(reason)},
    }
