"""Fresh-link requests wait for the outbox worker, so that the answer takes the same time for every address (B1)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08 01:00:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'link_requests',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('contact_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_link_requests')),
    )


def downgrade():
    op.drop_table('link_requests')
