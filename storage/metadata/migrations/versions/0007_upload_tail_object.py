"""upload sessions keep their tail as a sealed object in the block store, named in the row

Keeping it in the row wrote up to a block of data into the database's log at every
append (and again at checkpoint); sessions in flight with a tail in the row are dropped
(their clients start over).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM uploads WHERE id IN "
        "(SELECT upload_id FROM upload_sessions WHERE tail_data IS NOT NULL AND completed_at IS NULL)"
    )
    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tail_name', sa.String(length=160), nullable=True))
        batch_op.drop_column('tail_data')


def downgrade() -> None:
    op.execute(
        "DELETE FROM uploads WHERE id IN "
        "(SELECT upload_id FROM upload_sessions WHERE tail_name IS NOT NULL AND completed_at IS NULL)"
    )
    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tail_data', sa.LargeBinary(), nullable=True))
        batch_op.drop_column('tail_name')
