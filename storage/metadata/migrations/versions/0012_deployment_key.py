"""deployment: one row with this deployment's random key (the default Redis namespace)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 01:45:00
"""

import secrets
import time

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        'deployment',
        sa.Column('id', sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column('key', sa.String(32), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
    )
    op.bulk_insert(table, [{'id': 1, 'key': secrets.token_hex(8), 'created_at': time.time()}])


def downgrade() -> None:
    op.drop_table('deployment')
