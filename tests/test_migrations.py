"""The migrations build the model's schema on SQLite and PostgreSQL alike."""

import importlib
import pkgutil

import pytest
import sqlalchemy as sa

import portal
from portal.contacts import Contact
from portal.contacts import FieldDefinition
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.ledger import LedgerHead

BUILTIN_FIELDS = {
    "email",
    "first_name",
    "last_name",
    "phone",
    "region",
    "language",
    "kind",
    "opt_in_status",
}


def _import_every_module() -> None:
    """Load every model, including those no request or command has imported yet."""
    for module in pkgutil.walk_packages(portal.__path__, "portal."):
        importlib.import_module(module.name)


def test_db_check_finds_no_drift(base_app):
    # Runs on its own connection: the rollback fixture's open write transaction would block it
    # on SQLite.
    _import_every_module()
    result = base_app.test_cli_runner().invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output


def test_every_model_table_exists_after_upgrade(base_app):
    _import_every_module()
    with base_app.app_context():
        existing = set(sa.inspect(db.engine).get_table_names())
    assert set(db.metadata.tables) <= existing


def test_builtin_field_definitions_exist(app):
    rows = db.session.scalars(sa.select(FieldDefinition).where(FieldDefinition.builtin)).all()
    assert {row.name for row in rows} == BUILTIN_FIELDS
    personal = {row.name for row in rows if row.personal}
    assert personal == {"email", "first_name", "last_name", "phone"}
    assert not any(row.sensitive for row in rows)


def test_the_ledger_head_row_exists(app):
    head = db.session.get(LedgerHead, 1)
    assert head is not None
    assert db.session.scalar(sa.select(sa.func.count()).select_from(LedgerHead)) == 1


@pytest.mark.parametrize("column", ["opt_in_status", "opt_in_before_opt_out"])
def test_a_check_constraint_refuses_an_unknown_opt_in_status(app, column):
    values = {"public_id": "check-test", "email": "check@example.com", column: "maybe"}
    if column != "opt_in_status":
        values["opt_in_status"] = "none"
    statement = sa.insert(Contact.__table__).values(
        kind="lead",
        link_version=1,
        version=1,
        created_at=utcnow(),
        updated_at=utcnow(),
        **values,
    )
    with pytest.raises(sa.exc.IntegrityError):
        with db.session.begin_nested():
            db.session.execute(statement)


def test_a_check_constraint_accepts_every_known_opt_in_status(app):
    for number, status in enumerate(OptIn):
        db.session.add(
            Contact(
                email=f"status{number}@example.com",
                opt_in_status=status.value,
                opt_in_before_opt_out=status.value,
            )
        )
    db.session.flush()
    statuses = db.session.scalars(
        sa.select(Contact.opt_in_status).where(Contact.email.like("status%@example.com"))
    )
    assert set(statuses) == {status.value for status in OptIn}
