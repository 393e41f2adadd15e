"""The words the student heard of a tutor turn cut short, beside all the tutor said.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Cut turns recorded before keep NULL: how much of their text was heard cannot be known any more.
    with op.batch_alter_table("turns") as turns:
        turns.add_column(sa.Column("heard_text", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns") as turns:
        turns.drop_column("heard_text")
