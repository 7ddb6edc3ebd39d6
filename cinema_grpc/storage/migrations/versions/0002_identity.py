"""Identity schema: users (personal data), roles, sessions, login throttle.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Personal data lives only in this schema. Other areas store user ids without a
        -- foreign key into it and never read it.
        CREATE SCHEMA identity;

        CREATE TABLE identity.users (
            id            uuid PRIMARY KEY,
            email         text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
            display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
            phone         text NOT NULL DEFAULT '' CHECK (length(phone) <= 32),
            password_hash text NOT NULL,
            created_at    timestamptz NOT NULL,
            updated_at    timestamptz NOT NULL,
            CONSTRAINT users_email_key UNIQUE (email)
        );

        CREATE TABLE identity.user_roles (
            user_id       uuid NOT NULL REFERENCES identity.users (id),
            role          text NOT NULL CHECK (role IN ('CUSTOMER', 'STAFF', 'ADMIN')),
            PRIMARY KEY (user_id, role)
        );

        -- One row per sign-in; only refresh_token_id's refresh token works (rotation).
        CREATE TABLE identity.sessions (
            id               uuid PRIMARY KEY,
            user_id          uuid NOT NULL REFERENCES identity.users (id),
            refresh_token_id text NOT NULL,
            created_at       timestamptz NOT NULL,
            expires_at       timestamptz NOT NULL,
            revoked_at       timestamptz
        );
        CREATE INDEX sessions_user_idx ON identity.sessions (user_id) WHERE revoked_at IS NULL;

        -- Failed sign-ins per account or client in fixed windows.
        CREATE TABLE identity.login_failures (
            key           text PRIMARY KEY,
            window_start  timestamptz NOT NULL,
            failures      integer NOT NULL CHECK (failures > 0)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP SCHEMA identity CASCADE")
