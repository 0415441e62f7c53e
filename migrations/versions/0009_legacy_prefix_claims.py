"""legacy prefix claims: a legacy result prefix is claimed once per bucket

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 01:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db


revision: str = '0009'
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    claims = op.create_table('legacy_prefix_claims',
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('bucket', sa.String(length=63), nullable=False),
    sa.Column('prefix', sa.Text(), nullable=False),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_legacy_prefix_claims_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_legacy_prefix_claims')),
    sa.UniqueConstraint('bucket', 'prefix', name='uq_legacy_prefix_claims_prefix')
    )
    # Runs made before claims existed: the newest run at each prefix holds it (its results
    # are the ones there now). Legacy runs always have the output s3://<bucket>/.
    runs = sa.table(
        'runs',
        sa.column('id', sa.String),
        sa.column('output_uri', sa.Text),
        sa.column('legacy_prefix', sa.Text),
        sa.column('created_at', app.db.UTCDateTime(timezone=True)),
    )
    rows = op.get_bind().execute(
        sa.select(runs.c.id, runs.c.output_uri, runs.c.legacy_prefix, runs.c.created_at)
        .where(runs.c.legacy_prefix.is_not(None))
        .order_by(runs.c.created_at, runs.c.id)
    )
    newest: dict[tuple[str, str], dict[str, object]] = {}
    for run_id, output_uri, prefix, created_at in rows:
        bucket = output_uri.removeprefix('s3://').partition('/')[0]
        newest[(bucket, prefix)] = {
            'run_id': run_id, 'bucket': bucket, 'prefix': prefix, 'created_at': created_at
        }
    if newest:
        op.bulk_insert(claims, list(newest.values()))


def downgrade() -> None:
    op.drop_table('legacy_prefix_claims')
