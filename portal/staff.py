"""Staff accounts of the back office."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash

from portal.contacts import normalise_email
from portal.db import db
from portal.db import utcnow

ROLES = ("admin", "agent")
MIN_PASSWORD_LENGTH = 12


class StaffError(ValueError):
    """A staff account cannot be created or changed as asked; the message says why."""


class StaffUser(db.Model):
    __tablename__ = "staff_users"
    __table_args__ = (sa.CheckConstraint(sa.column("role").in_(ROLES), name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(10))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in_at: Mapped[datetime | None]

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


def create_staff(email: str, password: str, role: str) -> StaffUser:
    """Create a staff account with a scrypt-hashed password."""
    address = normalise_email(email)
    if role not in ROLES:
        raise StaffError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StaffError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if db.session.scalar(sa.select(StaffUser.id).where(StaffUser.email == address)):
        raise StaffError("a staff account with this email address already exists")
    user = StaffUser(
        email=address, role=role, password_hash=generate_password_hash(password, method="scrypt")
    )
    db.session.add(user)
    db.session.flush()
    return user
