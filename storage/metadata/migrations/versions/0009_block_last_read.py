"""blocks remember when they were last read (batched), for the archive tier

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE (see 0008): never a batch copy of a table others reference.
    op.add_column('blocks', sa.Column('last_read_at', sa.Float(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE blocks DROP COLUMN last_read_at")
