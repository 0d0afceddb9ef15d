"""Back-office settings (issue 6): the log of staff edits to consents and lists

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 06:00:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('catalogue_edits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subject_type', sa.String(length=10), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('subject_ref', sa.String(length=60), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('changes', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=60), nullable=False),
    sa.CheckConstraint("subject_type IN ('consent', 'list')", name=op.f('ck_catalogue_edits_subject_type')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_catalogue_edits'))
    )


def downgrade():
    op.drop_table('catalogue_edits')
