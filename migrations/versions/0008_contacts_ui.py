"""Back-office contacts and saved filters (issue 6)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 06:00:00

"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
