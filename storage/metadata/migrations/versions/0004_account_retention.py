"""per-account retention settings

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retention', sa.Text(), nullable=True))


def downgrade() -> None:
    # Native DROP COLUMN: a batch copy of accounts would cascade its drop to every node on SQLite.
    op.execute("ALTER TABLE accounts DROP COLUMN retention")
