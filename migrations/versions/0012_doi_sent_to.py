"""Double opt-in: the address a request's last mail went to, as a keyed digest (issue 5, B9)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 13:00:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('doi_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sent_to', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('doi_requests', schema=None) as batch_op:
        batch_op.drop_column('sent_to')
