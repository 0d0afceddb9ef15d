"""Opt-in state machine and double opt-in requests (issue 5)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 06:00:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('opt_in_notes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('text_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_by', sa.String(length=60), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_opt_in_notes_contact_id_contacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_opt_in_notes')),
    sa.UniqueConstraint('public_id', name=op.f('uq_opt_in_notes_public_id'))
    )
    with op.batch_alter_table('opt_in_notes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_opt_in_notes_contact_id'), ['contact_id'], unique=False)

    op.create_table('doi_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=10), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('reminders', sa.Integer(), nullable=False),
    sa.Column('created_by', sa.String(length=60), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("source IN ('webform', 'staff', 'list')", name=op.f('ck_doi_requests_source')),
    sa.CheckConstraint("status IN ('pending', 'confirmed', 'expired')", name=op.f('ck_doi_requests_status')),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_doi_requests_contact_id_contacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_doi_requests')),
    sa.UniqueConstraint('public_id', name=op.f('uq_doi_requests_public_id'))
    )
    with op.batch_alter_table('doi_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_doi_requests_contact_id'), ['contact_id'], unique=False)
        batch_op.create_index('ix_doi_requests_status_last_sent_at', ['status', 'last_sent_at'], unique=False)


def downgrade():
    with op.batch_alter_table('doi_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_doi_requests_status_last_sent_at')
        batch_op.drop_index(batch_op.f('ix_doi_requests_contact_id'))

    op.drop_table('doi_requests')
    with op.batch_alter_table('opt_in_notes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_opt_in_notes_contact_id'))

    op.drop_table('opt_in_notes')
