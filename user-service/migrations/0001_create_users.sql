-- Users, owned by user-service in its own schema (message-service shares the database, never these tables).
-- The migrator creates the schema too (the migrations table lives in it); repeating it keeps this file standalone.
CREATE SCHEMA IF NOT EXISTS users;

CREATE TABLE users.users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT        NOT NULL,
    password_hash TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The same rule as `domain::Username`, so no code path can store a name the application would refuse.
    CONSTRAINT users_username_format CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$'),
    CONSTRAINT users_password_hash_is_phc CHECK (password_hash LIKE '$argon2%')
);

-- Case-insensitive uniqueness, enforced by the database so two concurrent registrations cannot both win.
-- The store maps a violation of this index (by name) to "username taken".
CREATE UNIQUE INDEX users_username_lower_key ON users.users (lower(username));

-- Prefix search (`lower(username) LIKE 'abc%'`) under any collation: text_pattern_ops compares bytewise.
CREATE INDEX users_username_lower_prefix_idx ON users.users (lower(username) text_pattern_ops);
