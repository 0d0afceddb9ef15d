"""Campaigns: an optional audience rule, and who was left out when sending began (issue 5)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 09:00:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('audience_rule', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('audience_at_start', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_column('audience_at_start')
        batch_op.drop_column('audience_rule')
