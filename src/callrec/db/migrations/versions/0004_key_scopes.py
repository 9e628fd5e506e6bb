"""key scopes and origin (admin keys in the database, CALLREC_ADMIN_KEY a bootstrap); server-side UI sessions

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import callrec.db.schema

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scopes', sa.String(length=200), server_default='', nullable=False))
        batch_op.add_column(sa.Column('origin', sa.String(length=16), server_default='', nullable=False))
    # keys made before scopes existed keep what they could do: admin keys everything, a domain's key its domain
    op.execute("UPDATE api_keys SET scopes = 'admin' WHERE domain_id IS NULL")
    op.execute("UPDATE api_keys SET scopes = 'settings read upload' WHERE domain_id IS NOT NULL")
    op.execute("UPDATE api_keys SET origin = 'env' WHERE domain_id IS NULL AND name = 'CALLREC_ADMIN_KEY'")
    op.create_table('ui_sessions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', callrec.db.schema.UtcDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', callrec.db.schema.UtcDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', callrec.db.schema.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['key_id'], ['api_keys.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ui_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ui_sessions_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_ui_sessions_key_id'), ['key_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ui_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ui_sessions_key_id'))
        batch_op.drop_index(batch_op.f('ix_ui_sessions_expires_at'))
    op.drop_table('ui_sessions')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('origin')
        batch_op.drop_column('scopes')
