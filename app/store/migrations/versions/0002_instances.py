"""Which instance runs each lesson, and when each instance was last alive.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
    )
    op.create_index(op.f("ix_instances_seen_at"), "instances", ["seen_at"])
    with op.batch_alter_table("lessons") as lessons:
        lessons.add_column(sa.Column("instance_id", sa.String(32), nullable=True))
        lessons.create_index(op.f("ix_lessons_instance_id"), ["instance_id"])


def downgrade() -> None:
    with op.batch_alter_table("lessons") as lessons:
        lessons.drop_index(op.f("ix_lessons_instance_id"))
        lessons.drop_column("instance_id")
    op.drop_index(op.f("ix_instances_seen_at"), table_name="instances")
    op.drop_table("instances")
