"""A lesson's response count is kept with its tokens: a lesson taken over goes on counting its responses.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Lessons recorded before keep NULL: their count is not known (a take-over of one counts from 0).
    with op.batch_alter_table("lessons") as lessons:
        lessons.add_column(sa.Column("responses", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lessons") as lessons:
        lessons.drop_column("responses")
