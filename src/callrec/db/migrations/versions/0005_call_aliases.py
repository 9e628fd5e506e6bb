"""call aliases: every Call-ID of a call's dialogs and the original Call-ID(s) its SRC named, searchable

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 11:00:00
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    aliases = op.create_table('call_aliases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('call_id', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['call_id'], ['calls.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('call_aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_call_aliases_call_id'), ['call_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_call_aliases_value'), ['value'], unique=False)
    # calls recorded before: the Call-IDs their call.json (kept in calls.info) lists
    conn = op.get_bind()
    rows: list[dict[str, Any]] = []
    for call_id, info in conn.execute(sa.text("SELECT id, info FROM calls")):
        data = json.loads(info) if isinstance(info, str) else info
        ids = data.get("call_ids") if isinstance(data, dict) else None
        for value in dict.fromkeys(str(v).replace("\x00", "")[:300] for v in (ids if isinstance(ids, list) else [])):
            if value:
                rows.append({"call_id": call_id, "value": value, "kind": "dialog"})
    if rows:
        op.bulk_insert(aliases, rows)


def downgrade() -> None:
    with op.batch_alter_table('call_aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_call_aliases_value'))
        batch_op.drop_index(batch_op.f('ix_call_aliases_call_id'))
    op.drop_table('call_aliases')
