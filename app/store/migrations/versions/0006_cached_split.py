"""The cached input tokens of a lesson split into audio and text, as its cost estimate took them off.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Lessons recorded before keep NULL: their split is not known (app.usage.LessonUsage.carry says what then).
    with op.batch_alter_table("lessons") as lessons:
        lessons.add_column(sa.Column("cached_audio_tokens", sa.Integer(), nullable=True))
        lessons.add_column(sa.Column("cached_text_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lessons") as lessons:
        lessons.drop_column("cached_text_tokens")
        lessons.drop_column("cached_audio_tokens")
