"""Web-form sign-ups wait for the outbox worker, so that the answer takes the same time for every address (M2)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 01:30:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'queued_signups',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('address', sa.String(length=254), nullable=True),
        sa.Column('list_ids', sa.JSON(), nullable=False),
        sa.Column('marketing', sa.Boolean(), nullable=False),
        sa.Column('first_name', sa.String(length=100), nullable=True),
        sa.Column('language', sa.String(length=10), nullable=True),
        sa.Column('ip_address', sa.String(length=45), nullable=True),
        sa.Column('user_agent', sa.String(length=500), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_queued_signups')),
    )


def downgrade():
    op.drop_table('queued_signups')
