"""small blocks' sealed objects kept in their row (blocks.inline_data)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 05:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE (see 0008): never a batch copy of a table others reference.
    op.add_column('blocks', sa.Column('inline_data', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Inline objects have nowhere else to go: refuse rather than lose them.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT 1 FROM blocks WHERE inline_data IS NOT NULL LIMIT 1")).first():
        raise RuntimeError("blocks are stored inline; downgrading would lose them")
    op.execute("ALTER TABLE blocks DROP COLUMN inline_data")
