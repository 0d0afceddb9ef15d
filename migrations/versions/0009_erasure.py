"""Locks and erasure in the back office (issue 6)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 06:00:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('restriction_notes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=10), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('actor', sa.String(length=60), nullable=False),
    sa.Column('event_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("action IN ('stopped', 'lifted')", name=op.f('ck_restriction_notes_action')),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_restriction_notes_contact_id_contacts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['event_id'], ['ledger_events.id'], name=op.f('fk_restriction_notes_event_id_ledger_events')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_restriction_notes'))
    )
    with op.batch_alter_table('restriction_notes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_restriction_notes_contact_id'), ['contact_id'], unique=False)

    op.create_table('erasure_extensions',
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('months', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('actor', sa.String(length=60), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_erasure_extensions_contact_id_contacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('contact_id', name=op.f('pk_erasure_extensions'))
    )
    op.create_table('erasure_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('contact_ref', sa.String(length=32), nullable=False),
    sa.Column('masked_identity', sa.String(length=254), nullable=False),
    sa.Column('mode', sa.String(length=10), nullable=False),
    sa.Column('actor', sa.String(length=60), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('erased', sa.JSON(), nullable=False),
    sa.Column('kept', sa.JSON(), nullable=False),
    sa.Column('event_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("mode IN ('erase', 'delete')", name=op.f('ck_erasure_log_mode')),
    sa.ForeignKeyConstraint(['event_id'], ['ledger_events.id'], name=op.f('fk_erasure_log_event_id_ledger_events')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erasure_log'))
    )
    with op.batch_alter_table('erasure_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_erasure_log_contact_ref'), ['contact_ref'], unique=False)


def downgrade():
    with op.batch_alter_table('erasure_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_erasure_log_contact_ref'))

    op.drop_table('erasure_log')
    op.drop_table('erasure_extensions')
    with op.batch_alter_table('restriction_notes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_restriction_notes_contact_id'))

    op.drop_table('restriction_notes')
