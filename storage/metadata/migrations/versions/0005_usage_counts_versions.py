"""quota usage counts every retained version (and the trash), not only live files

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:55:00
"""

from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE accounts SET used_bytes = "
        "(SELECT COALESCE(SUM(versions.size), 0) FROM versions WHERE versions.account_id = accounts.id)"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE accounts SET used_bytes = (SELECT COALESCE(SUM(nodes.size), 0) FROM nodes "
        "WHERE nodes.account_id = accounts.id AND nodes.kind = 'f' AND nodes.deleted_at IS NULL)"
    )
