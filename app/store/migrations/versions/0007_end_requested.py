"""A teacher may end a lesson under way: when they asked is kept on the lesson, for whichever worker runs it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lessons") as lessons:
        lessons.add_column(sa.Column("end_requested_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_lessons_ended_at"), "lessons", ["ended_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_lessons_ended_at"), table_name="lessons")
    with op.batch_alter_table("lessons") as lessons:
        lessons.drop_column("end_requested_at")
