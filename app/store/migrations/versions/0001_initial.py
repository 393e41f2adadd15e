"""The lesson records: students, links, lessons, turns, lesson events, app secrets.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "students",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("level", sa.String(2), nullable=False),
        sa.Column("target_language", sa.String(60), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("archived_at", _utc(), nullable=True),
        sa.Column("browser_key_hash", sa.String(64), nullable=True),
        sa.CheckConstraint("level IN ('A1', 'A2', 'B1', 'B2', 'C1', 'C2')", name=op.f("ck_students_level")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_students")),
        sa.UniqueConstraint("browser_key_hash", name=op.f("uq_students_browser_key_hash")),
    )
    op.create_table(
        "links",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("student_id", sa.String(32), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("expires_at", _utc(), nullable=True),
        sa.Column("revoked_at", _utc(), nullable=True),
        sa.Column("topic", sa.Text(), nullable=True),
        sa.Column("support_language", sa.String(60), nullable=True),
        sa.ForeignKeyConstraint(["student_id"], ["students.id"], name=op.f("fk_links_student_id_students"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_links")),
    )
    op.create_index(op.f("ix_links_student_id"), "links", ["student_id"])
    op.create_table(
        "lessons",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("student_id", sa.String(32), nullable=True),
        sa.Column("link_id", sa.String(32), nullable=True),
        sa.Column("level", sa.String(2), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("ended_at", _utc(), nullable=True),
        sa.Column("end_reason", sa.String(100), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        sa.Column("audio_input_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("text_input_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cached_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("audio_output_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("text_output_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("estimated_cost_usd", sa.Float(), server_default="0", nullable=False),
        sa.Column("feedback", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["student_id"], ["students.id"], name=op.f("fk_lessons_student_id_students"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lessons")),
    )
    op.create_index(op.f("ix_lessons_student_id"), "lessons", ["student_id"])
    op.create_index(op.f("ix_lessons_started_at"), "lessons", ["started_at"])
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("lesson_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(7), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("ended_at", _utc(), nullable=False),
        sa.Column("interrupted", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("heard_ms", sa.Integer(), nullable=True),
        sa.CheckConstraint("role IN ('tutor', 'student')", name=op.f("ck_turns_role")),
        sa.ForeignKeyConstraint(["lesson_id"], ["lessons.id"], name=op.f("fk_turns_lesson_id_lessons"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_turns")),
        sa.UniqueConstraint("lesson_id", "seq", name=op.f("uq_turns_lesson_id_seq")),
    )
    op.create_table(
        "lesson_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("lesson_id", sa.String(64), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("kind", sa.String(60), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["lesson_id"], ["lessons.id"],
                                name=op.f("fk_lesson_events_lesson_id_lessons"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lesson_events")),
    )
    op.create_index(op.f("ix_lesson_events_lesson_id"), "lesson_events", ["lesson_id"])
    op.create_table(
        "app_secrets",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_app_secrets")),
    )


def downgrade() -> None:
    op.drop_table("app_secrets")
    op.drop_index(op.f("ix_lesson_events_lesson_id"), table_name="lesson_events")
    op.drop_table("lesson_events")
    op.drop_table("turns")
    op.drop_index(op.f("ix_lessons_started_at"), table_name="lessons")
    op.drop_index(op.f("ix_lessons_student_id"), table_name="lessons")
    op.drop_table("lessons")
    op.drop_index(op.f("ix_links_student_id"), table_name="links")
    op.drop_table("links")
    op.drop_table("students")
