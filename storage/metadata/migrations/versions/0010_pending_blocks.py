"""blocks uploaded through the block API are pending until a commit lists them

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 03:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE (see 0008): never a batch copy of a table others reference.
    op.add_column(
        'blocks', sa.Column('pending', sa.Boolean(), nullable=False, server_default=sa.text('false'))
    )
    op.create_index(
        'ix_blocks_pending',
        'blocks',
        ['account_id'],
        sqlite_where=sa.text('pending'),
        postgresql_where=sa.text('pending'),
    )


def downgrade() -> None:
    op.drop_index('ix_blocks_pending', table_name='blocks')
    op.execute("ALTER TABLE blocks DROP COLUMN pending")
