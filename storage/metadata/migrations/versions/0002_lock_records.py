"""lock records

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 11:53:06.348702
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lock_records',
    sa.Column('token', sa.String(length=200), nullable=False),
    sa.Column('root', sa.Text().with_variant(sa.Text(collation='C'), 'postgresql'), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('expire', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('token', name=op.f('pk_lock_records'))
    )
    with op.batch_alter_table('lock_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lock_records_root'), ['root'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('lock_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lock_records_root'))

    op.drop_table('lock_records')
