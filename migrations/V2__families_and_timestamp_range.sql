-- Two fixes found by hostile input (refinery applies this once, in one transaction).
--
-- 1. A due date must be writable back as RFC 3339 (four-digit years, in UTC). The API now
--    refuses anything else with 422, and this constraint makes sure no other path can store
--    one: a single out-of-range row used to make every list of its owner fail. Rows stored
--    before the API checked (only through that bug) lose their due date.
UPDATE tasks SET due_at = NULL
WHERE due_at < '0001-01-01 00:00:00+00 BC' OR due_at >= '10000-01-01 00:00:00+00';

ALTER TABLE tasks ADD CONSTRAINT tasks_due_at_rfc3339
    CHECK (due_at >= '0001-01-01 00:00:00+00 BC' AND due_at < '10000-01-01 00:00:00+00');

-- 2. A refresh-token family (one login) becomes a row of its own, and revoking it is one
--    update of that row. Rotation locks the same row before it spends a token and re-checks
--    `revoked_at` after the lock (READ COMMITTED re-evaluates a locked row's predicate), so a
--    rotation racing a revocation either finishes first and its new token dies with the
--    family, or sees the revocation and issues nothing. Before, revocation updated the
--    family's token rows it could see, and a token inserted by a concurrent rotation escaped.
CREATE TABLE refresh_families (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Absolute end of the login, however often it is refreshed.
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    -- Last successful rotation (the update that takes the family's row lock).
    rotated_at  timestamptz
);

CREATE INDEX refresh_families_user_idx ON refresh_families (user_id);

INSERT INTO refresh_families (id, user_id, created_at, expires_at, revoked_at)
SELECT family_id,
       (array_agg(user_id))[1],
       min(created_at),
       max(family_expires_at),
       max(revoked_at)
FROM refresh_tokens
GROUP BY family_id;

ALTER TABLE refresh_tokens ADD CONSTRAINT refresh_tokens_family_fk
    FOREIGN KEY (family_id) REFERENCES refresh_families (id) ON DELETE CASCADE;
