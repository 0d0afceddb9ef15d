"""Opt-in notes also keep the reasons staff give, out of the ledger (SECURITY 10)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 10:00:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('opt_in_notes', schema=None) as batch_op:
        # Every note written before this revision is out-of-band evidence.
        batch_op.add_column(
            sa.Column('kind', sa.String(length=20), server_default='out_of_band', nullable=False)
        )
        batch_op.create_check_constraint(
            op.f('ck_opt_in_notes_kind'), "kind IN ('out_of_band', 'reason')"
        )
        # A reason note keeps no bare digest of its text: its ledger event holds a keyed one.
        batch_op.alter_column('text_sha256', existing_type=sa.String(length=64), nullable=True)


def downgrade():
    # The reasons go back to nowhere: delete them rather than pass them off as evidence.
    op.execute("DELETE FROM opt_in_notes WHERE kind = 'reason'")
    with op.batch_alter_table('opt_in_notes', schema=None) as batch_op:
        batch_op.alter_column('text_sha256', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_constraint(op.f('ck_opt_in_notes_kind'), type_='check')
        batch_op.drop_column('kind')
