"""change feed: journal entries carry the node's mtime; accounts remember the compacted floor

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 00:10:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE, never a batch "move and copy": on SQLite with foreign keys on,
    # dropping the old accounts table would cascade to every node and version.
    op.add_column('journal', sa.Column('mtime', sa.Float(), nullable=True))
    op.create_index('ix_journal_at', 'journal', ['at'], unique=False)
    op.add_column(
        'accounts', sa.Column('journal_floor', sa.BigInteger(), server_default=sa.text('0'), nullable=False)
    )


def downgrade() -> None:
    # Native DROP COLUMN (SQLite >= 3.35), for the same reason.
    op.drop_index('ix_journal_at', table_name='journal')
    op.execute("ALTER TABLE journal DROP COLUMN mtime")
    op.execute("ALTER TABLE accounts DROP COLUMN journal_floor")
