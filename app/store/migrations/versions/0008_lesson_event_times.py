"""Lesson events are found by when they happened: the failures page reads those of the last days without reading
every event ever recorded.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_lesson_events_at"), "lesson_events", ["at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_lesson_events_at"), table_name="lesson_events")
