"""Staff accounts of the back office: passwords, roles, sign-in and per-field reveal rights."""

from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa
from flask_login import LoginManager
from flask_login import UserMixin
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash

from portal import hooks
from portal.contacts import InvalidEmail
from portal.contacts import normalise_email
from portal.db import db
from portal.db import utcnow

ROLES = ("admin", "agent")
MIN_PASSWORD_LENGTH = 12
LOCK_AFTER_FAILURES = 10
LOCK_MINUTES = 15
# Checked against when the address is unknown, so that every answer takes the same time.
_DUMMY_HASH = generate_password_hash("not a real password", method="scrypt")

login_manager = LoginManager()
login_manager.login_view = "backoffice.sign_in"
login_manager.session_protection = "strong"


class StaffError(ValueError):
    """A staff account cannot be created or changed as asked; the message says why."""


class StaffUser(UserMixin, db.Model):
    __tablename__ = "staff_users"
    __table_args__ = (sa.CheckConstraint(sa.column("role").in_(ROLES), name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(10))
    active: Mapped[bool] = mapped_column(default=True)
    failed_sign_ins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime | None]

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class RevealPermission(db.Model):
    """A staff member's right to reveal the values of one sensitive field (S1, E3)."""

    __tablename__ = "reveal_permissions"
    __table_args__ = (sa.PrimaryKeyConstraint("staff_id", "field_id"),)

    staff_id: Mapped[int] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="CASCADE"))
    field_id: Mapped[int] = mapped_column(sa.ForeignKey("field_definitions.id"))
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)


@login_manager.user_loader
def load_user(user_id: str) -> StaffUser | None:
    if not user_id.isdigit():
        return None
    user = db.session.get(StaffUser, int(user_id))
    return user if user is not None and user.active else None


def create_staff(email: str, password: str, role: str) -> StaffUser:
    """Create a staff account with a scrypt-hashed password."""
    try:
        address = normalise_email(email)
    except InvalidEmail as error:
        raise StaffError(str(error)) from None
    if role not in ROLES:
        raise StaffError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StaffError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if db.session.scalar(sa.select(StaffUser.id).where(StaffUser.email == address)):
        raise StaffError("a staff account with this email address already exists")
    user = StaffUser(email=address, role=role,
                     password_hash=generate_password_hash(password, method="scrypt"))
    db.session.add(user)
    db.session.flush()
    return user


def authenticate(email: str, password: str) -> StaffUser | None:
    """Return the account if the password is right and it is not locked; else None.

    Failed attempts are counted and lock the account for a while. The caller answers the same
    for an unknown address, a wrong password and a locked account.
    """
    try:
        address = normalise_email(email)
    except InvalidEmail:
        address = None
    user = address and db.session.scalar(sa.select(StaffUser).where(StaffUser.email == address))
    if not user:
        check_password_hash(_DUMMY_HASH, password)
        return None
    now = utcnow()
    if user.locked_until is not None and user.locked_until > now:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not user.active or not user.check_password(password):
        user.failed_sign_ins += 1
        if user.failed_sign_ins >= LOCK_AFTER_FAILURES:
            user.locked_until = now + timedelta(minutes=LOCK_MINUTES)
            user.failed_sign_ins = 0
        return None
    user.failed_sign_ins = 0
    user.locked_until = None
    user.last_sign_in_at = now
    return user


def can_reveal(user: StaffUser, field_id: int) -> bool:
    """Say whether a staff member may reveal a sensitive field's values."""
    return db.session.get(RevealPermission, (user.id, field_id)) is not None


def init_app(app) -> None:
    """Bind Flask-Login."""
    # Only staff pages show the signed-in user: the back office's blueprint puts current_user
    # into its templates, so a contact's page does not look for a staff session at all.
    # Flask-Login looks into the session after every request for a remember-me cookie to
    # refresh, and looking marks the session used: every contact page and one-click answer
    # then said "Vary: Cookie" and went through the session's saving. Staff sign in and out
    # on the back office's pages only, so the look runs there only.
    for registry, hook in hooks.installed(
        app, lambda app: login_manager.init_app(app, add_context_processor=False)
    ):
        hooks.only_on(registry, hook, ("backoffice",))
