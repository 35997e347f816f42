-- Gatehouse schema: accounts, their tasks, and refresh-token families.
-- Applied by refinery through `core-api migrate`; never edited once released.

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Stored normalised (trimmed, lower-case) by the API; uniqueness is on that form.
    email         text NOT NULL UNIQUE CHECK (char_length(email) BETWEEN 3 AND 254),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title       text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    description text CHECK (char_length(description) <= 4000),
    completed   boolean NOT NULL DEFAULT false,
    due_at      timestamptz,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Owner-scoped keyset listing: WHERE owner_id = $1 ORDER BY created_at DESC, id DESC.
CREATE INDEX tasks_owner_created_idx ON tasks (owner_id, created_at DESC, id DESC);

-- Refresh tokens are opaque to clients and stored only as SHA-256 hashes. A family is one
-- login; every rotation adds a row to it. Presenting a spent token revokes the family
-- (RFC 9700 §4.14.2).
CREATE TABLE refresh_tokens (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    family_id         uuid NOT NULL,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash        bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    family_expires_at timestamptz NOT NULL,
    used_at           timestamptz,
    revoked_at        timestamptz
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

-- Row-level security: the second wall behind the API's own `owner_id = $n` predicates
-- (SECURITY.md). FORCE applies the policy to the table owner too, so it holds whatever
-- non-superuser role the API connects as. The identity is set per transaction with
-- set_config('app.user_id', $1, true); unset or empty means no rows at all (fail closed).
ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;

CREATE POLICY tasks_owner_only ON tasks
    USING (owner_id = NULLIF(current_setting('app.user_id', true), '')::uuid)
    WITH CHECK (owner_id = NULLIF(current_setting('app.user_id', true), '')::uuid);
