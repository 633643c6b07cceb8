"""upload sessions keep their unchunked tail in the session row (sealed), not as a block

Sessions in flight that held their tail as a block cannot continue: they are dropped
(their clients start over; their blocks are collected).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:10:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM uploads WHERE id IN (SELECT upload_id FROM upload_sessions WHERE tail AND completed_at IS NULL)"
    )
    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tail_data', sa.LargeBinary(), nullable=True))
        batch_op.drop_column('tail')


def downgrade() -> None:
    op.execute(
        "DELETE FROM uploads WHERE id IN "
        "(SELECT upload_id FROM upload_sessions WHERE tail_data IS NOT NULL AND completed_at IS NULL)"
    )
    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tail', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.drop_column('tail_data')
