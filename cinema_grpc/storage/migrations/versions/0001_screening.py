"""Screening schema, seat claims and the request log.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE SCHEMA screening;
        CREATE SCHEMA booking;
        CREATE SCHEMA api;

        CREATE TABLE screening.cinemas (
            id            uuid PRIMARY KEY,
            name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
            time_zone     text NOT NULL,
            currency      char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            created_at    timestamptz NOT NULL
        );
        CREATE UNIQUE INDEX cinemas_name_key ON screening.cinemas (lower(name));

        CREATE TABLE screening.halls (
            id            uuid PRIMARY KEY,
            -- Integer twin of id for the showtime exclusion constraint: built-in range
            -- operator classes cover int8range, so no btree_gist extension is needed.
            key           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            cinema_id     uuid NOT NULL REFERENCES screening.cinemas (id),
            name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
            layout        jsonb NOT NULL,
            created_at    timestamptz NOT NULL,
            updated_at    timestamptz NOT NULL
        );
        CREATE UNIQUE INDEX halls_cinema_name_key ON screening.halls (cinema_id, lower(name));

        -- Seats are never deleted: tickets of past showtimes keep pointing at them. A new
        -- layout retires the old seats and adds new ones.
        CREATE TABLE screening.seats (
            id            uuid PRIMARY KEY,
            hall_id       uuid NOT NULL REFERENCES screening.halls (id),
            row_index     integer NOT NULL CHECK (row_index >= 0),
            row_label     text NOT NULL CHECK (length(row_label) BETWEEN 1 AND 8),
            number        integer NOT NULL CHECK (number > 0),
            grid_column   integer NOT NULL CHECK (grid_column > 0),
            kind          text NOT NULL CHECK (kind IN ('STANDARD', 'PREMIUM', 'WHEELCHAIR', 'COMPANION')),
            in_service    boolean NOT NULL DEFAULT true,
            out_of_service_reason text NOT NULL DEFAULT '',
            retired_at    timestamptz
        );
        CREATE UNIQUE INDEX seats_hall_row_number_key
            ON screening.seats (hall_id, row_label, number) WHERE retired_at IS NULL;
        CREATE UNIQUE INDEX seats_hall_row_column_key
            ON screening.seats (hall_id, row_label, grid_column) WHERE retired_at IS NULL;

        CREATE TABLE screening.movies (
            id               uuid PRIMARY KEY,
            title            text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
            duration_minutes integer NOT NULL CHECK (duration_minutes BETWEEN 1 AND 600),
            rating           text NOT NULL DEFAULT '' CHECK (length(rating) <= 20),
            active           boolean NOT NULL,
            created_at       timestamptz NOT NULL,
            updated_at       timestamptz NOT NULL
        );
        CREATE INDEX movies_title_idx ON screening.movies (lower(title), id);

        CREATE TABLE screening.showtimes (
            id            uuid PRIMARY KEY,
            cinema_id     uuid NOT NULL REFERENCES screening.cinemas (id),
            hall_id       uuid NOT NULL REFERENCES screening.halls (id),
            hall_key      bigint NOT NULL REFERENCES screening.halls (key),
            movie_id      uuid NOT NULL REFERENCES screening.movies (id),
            starts_at     timestamptz NOT NULL,
            ends_at       timestamptz NOT NULL,
            -- ends_at + cleaning buffer, stored because timestamptz + interval is not
            -- immutable and cannot appear in the constraint's index expression.
            busy_until    timestamptz NOT NULL,
            state         text NOT NULL CHECK (state IN ('SCHEDULED', 'CANCELLED')),
            cancel_reason text NOT NULL DEFAULT '',
            created_at    timestamptz NOT NULL,
            CHECK (ends_at > starts_at AND busy_until >= ends_at),
            -- No two scheduled showtimes of one hall may share a moment of their busy
            -- periods. Decided by the database, so concurrent creates cannot both win.
            CONSTRAINT showtimes_no_overlap EXCLUDE USING gist (
                int8range(hall_key, hall_key, '[]') WITH &&,
                tstzrange(starts_at, busy_until) WITH &&
            ) WHERE (state = 'SCHEDULED')
        );
        CREATE INDEX showtimes_cinema_start_idx ON screening.showtimes (cinema_id, starts_at, id);
        CREATE INDEX showtimes_movie_start_idx ON screening.showtimes (movie_id, starts_at, id);
        CREATE INDEX showtimes_hall_start_idx ON screening.showtimes (hall_id, starts_at, id);
        CREATE INDEX showtimes_start_idx ON screening.showtimes (starts_at, id);

        CREATE TABLE screening.showtime_prices (
            showtime_id   uuid NOT NULL REFERENCES screening.showtimes (id),
            kind          text NOT NULL CHECK (kind IN ('STANDARD', 'PREMIUM', 'WHEELCHAIR', 'COMPANION')),
            amount_minor  bigint NOT NULL CHECK (amount_minor >= 0),
            currency      char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            PRIMARY KEY (showtime_id, kind)
        );

        -- One row per seat held or sold for a showtime, with its price frozen at claim time.
        CREATE TABLE booking.seat_claims (
            id            uuid PRIMARY KEY,
            showtime_id   uuid NOT NULL REFERENCES screening.showtimes (id),
            seat_id       uuid NOT NULL REFERENCES screening.seats (id),
            status        text NOT NULL CHECK (status IN ('HELD', 'SOLD', 'RELEASED', 'CANCELLED')),
            amount_minor  bigint NOT NULL CHECK (amount_minor >= 0),
            currency      char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            expires_at    timestamptz,
            created_at    timestamptz NOT NULL,
            CHECK (status <> 'HELD' OR expires_at IS NOT NULL)
        );
        -- The last word on double booking: at most one active claim per seat and showtime,
        -- whatever the application code does.
        CREATE UNIQUE INDEX seat_claims_active_key
            ON booking.seat_claims (showtime_id, seat_id) WHERE status IN ('HELD', 'SOLD');

        -- Mutating requests carried out under a client request_id (AIP-155).
        CREATE TABLE api.request_log (
            scope         text NOT NULL,
            request_id    text NOT NULL,
            fingerprint   text NOT NULL,
            resource_id   uuid NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (scope, request_id)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP SCHEMA api CASCADE; DROP SCHEMA booking CASCADE; DROP SCHEMA screening CASCADE;")
