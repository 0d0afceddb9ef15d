"""Mailing lists: their name and description in the page's other languages (issue 4, B11)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 14:00:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('mailing_lists', schema=None) as batch_op:
        batch_op.add_column(sa.Column('translations', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('mailing_lists', schema=None) as batch_op:
        batch_op.drop_column('translations')
