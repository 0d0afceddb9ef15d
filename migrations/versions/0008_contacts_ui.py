"""Back-office contacts and saved filters (issue 6)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 06:00:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('saved_filters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('query', sa.String(length=2000), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['staff_users.id'], name=op.f('fk_saved_filters_created_by_id_staff_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_saved_filters')),
    sa.UniqueConstraint('name', name=op.f('uq_saved_filters_name'))
    )
    op.create_table('export_lines',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('line', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_export_lines_contact_id_contacts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_export_lines_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'contact_id', name=op.f('pk_export_lines'))
    )
    with op.batch_alter_table('export_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_lines_contact_id'), ['contact_id'], unique=False)


def downgrade():
    with op.batch_alter_table('export_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_lines_contact_id'))

    op.drop_table('export_lines')
    op.drop_table('saved_filters')
