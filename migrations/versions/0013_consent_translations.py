"""Consents: a version's wording in the page's other languages (issue 4, B11)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 13:40:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('consent_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('translations', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('consent_versions', schema=None) as batch_op:
        batch_op.drop_column('translations')
