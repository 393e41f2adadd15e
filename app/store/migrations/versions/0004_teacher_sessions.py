"""Signed-in desk sessions, kept in the store so that signing out ends a session on the server.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teacher_sessions",
        sa.Column("id_digest", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id_digest", name=op.f("pk_teacher_sessions")),
    )
    op.create_index(op.f("ix_teacher_sessions_expires_at"), "teacher_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_teacher_sessions_expires_at"), table_name="teacher_sessions")
    op.drop_table("teacher_sessions")
