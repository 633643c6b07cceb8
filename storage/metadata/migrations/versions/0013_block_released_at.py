"""blocks remember when the last version naming them went, so gc waits the grace from then

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 04:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE (see 0008): never a batch copy of a table others reference.
    op.add_column('blocks', sa.Column('released_at', sa.Float(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE blocks DROP COLUMN released_at")
