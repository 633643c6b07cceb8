"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 11:37:46.937855
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('chunkers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('algorithm', sa.String(length=32), nullable=False),
    sa.Column('implementation', sa.String(length=64), nullable=False),
    sa.Column('min_size', sa.Integer(), nullable=False),
    sa.Column('avg_size', sa.Integer(), nullable=False),
    sa.Column('max_size', sa.Integer(), nullable=False),
    sa.Column('normalization', sa.SmallInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chunkers')),
    sa.UniqueConstraint('algorithm', 'implementation', 'min_size', 'avg_size', 'max_size', 'normalization', name=op.f('uq_chunkers_algorithm_implementation_min_size_avg_size_max_size_normalization')),
    sqlite_autoincrement=True
    )
    op.create_table('accounts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=True),
    sa.Column('wrapped_key', sa.LargeBinary(), nullable=False),
    sa.Column('master_key_id', sa.String(length=32), nullable=False),
    sa.Column('key_epoch', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('chunker_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('root_node_id', sa.BigInteger(), nullable=True),
    sa.Column('quota_bytes', sa.BigInteger(), nullable=True),
    sa.Column('used_bytes', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('change_seq', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['chunker_id'], ['chunkers.id'], name=op.f('fk_accounts_chunker_id_chunkers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('name', name=op.f('uq_accounts_name')),
    sqlite_autoincrement=True
    )
    op.create_table('blocks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sha256', sa.LargeBinary(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('stored_size', sa.Integer(), nullable=False),
    sa.Column('codec', sa.SmallInteger(), nullable=False),
    sa.Column('key_epoch', sa.Integer(), nullable=False),
    sa.Column('tier', sa.SmallInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_blocks_account_id_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocks')),
    sa.UniqueConstraint('account_id', 'sha256', name=op.f('uq_blocks_account_id_sha256')),
    sa.UniqueConstraint('name', name=op.f('uq_blocks_name')),
    sqlite_autoincrement=True
    )
    op.create_table('device_tokens',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('last_used_at', sa.Float(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_device_tokens_account_id_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_device_tokens_token_hash')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('device_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_tokens_account_id'), ['account_id'], unique=False)

    op.create_table('journal',
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('node_id', sa.BigInteger(), nullable=False),
    sa.Column('op', sa.String(length=8), nullable=False),
    sa.Column('kind', sa.String(length=1), nullable=False),
    sa.Column('path', sa.Text().with_variant(sa.Text(collation='C'), 'postgresql'), nullable=False),
    sa.Column('old_path', sa.Text().with_variant(sa.Text(collation='C'), 'postgresql'), nullable=True),
    sa.Column('version_id', sa.BigInteger(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_journal_account_id_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'seq', name=op.f('pk_journal'))
    )
    op.create_table('nodes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('path', sa.Text().with_variant(sa.Text(collation='C'), 'postgresql'), nullable=False),
    sa.Column('kind', sa.String(length=1), nullable=False),
    sa.Column('version_id', sa.BigInteger(), nullable=True),
    sa.Column('size', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('mtime', sa.Float(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('deleted_at', sa.Float(), nullable=True),
    sa.Column('trash_id', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_nodes_account_id_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['parent_id'], ['nodes.id'], name=op.f('fk_nodes_parent_id_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_nodes')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.create_index('ix_nodes_parent_id', ['parent_id'], unique=False)
        batch_op.create_index('ix_nodes_trash', ['account_id', 'trash_id'], unique=False)
        batch_op.create_index('uq_nodes_live_path', ['account_id', 'path'], unique=True, sqlite_where=sa.text('deleted_at IS NULL'), postgresql_where=sa.text('deleted_at IS NULL'))

    op.create_table('uploads',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_uploads_account_id_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_uploads'))
    )
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_uploads_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_uploads_expires_at'), ['expires_at'], unique=False)

    op.create_table('properties',
    sa.Column('node_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_properties_node_id_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('node_id', 'name', name=op.f('pk_properties'))
    )
    op.create_table('upload_blocks',
    sa.Column('upload_id', sa.String(length=64), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('block_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['block_id'], ['blocks.id'], name=op.f('fk_upload_blocks_block_id_blocks')),
    sa.ForeignKeyConstraint(['upload_id'], ['uploads.id'], name=op.f('fk_upload_blocks_upload_id_uploads'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('upload_id', 'idx', name=op.f('pk_upload_blocks'))
    )
    with op.batch_alter_table('upload_blocks', schema=None) as batch_op:
        batch_op.create_index('ix_upload_blocks_block_id', ['block_id'], unique=False)

    op.create_table('versions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('node_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.LargeBinary(length=32), nullable=False),
    sa.Column('mtime', sa.Float(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('device', sa.String(length=200), nullable=True),
    sa.Column('chunker_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('block_count', sa.Integer(), nullable=False),
    sa.Column('pinned', sa.Boolean(), server_default=sa.text('(false)'), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_versions_account_id_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['chunker_id'], ['chunkers.id'], name=op.f('fk_versions_chunker_id_chunkers')),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_versions_node_id_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_versions')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.create_index('ix_versions_node', ['node_id', 'id'], unique=False)

    op.create_table('version_blocks',
    sa.Column('version_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('block_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['block_id'], ['blocks.id'], name=op.f('fk_version_blocks_block_id_blocks')),
    sa.ForeignKeyConstraint(['version_id'], ['versions.id'], name=op.f('fk_version_blocks_version_id_versions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'idx', name=op.f('pk_version_blocks'))
    )
    with op.batch_alter_table('version_blocks', schema=None) as batch_op:
        batch_op.create_index('ix_version_blocks_block_id', ['block_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('version_blocks', schema=None) as batch_op:
        batch_op.drop_index('ix_version_blocks_block_id')

    op.drop_table('version_blocks')
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_index('ix_versions_node')

    op.drop_table('versions')
    with op.batch_alter_table('upload_blocks', schema=None) as batch_op:
        batch_op.drop_index('ix_upload_blocks_block_id')

    op.drop_table('upload_blocks')
    op.drop_table('properties')
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_uploads_expires_at'))
        batch_op.drop_index(batch_op.f('ix_uploads_account_id'))

    op.drop_table('uploads')
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_index('uq_nodes_live_path', sqlite_where=sa.text('deleted_at IS NULL'), postgresql_where=sa.text('deleted_at IS NULL'))
        batch_op.drop_index('ix_nodes_trash')
        batch_op.drop_index('ix_nodes_parent_id')

    op.drop_table('nodes')
    op.drop_table('journal')
    with op.batch_alter_table('device_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_tokens_account_id'))

    op.drop_table('device_tokens')
    op.drop_table('blocks')
    op.drop_table('accounts')
    op.drop_table('chunkers')
