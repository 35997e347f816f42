-- pgbench script: what core-api sends PostgreSQL for one GET /api/users/{id}/tasks?limit=20
-- (Db::scoped running tasks::LIST): a transaction that sets the row-level-security identity
-- and reads the owner's newest page, limit + 1 rows to learn whether a next page exists. Like
-- the API, the two statements go out as one pipeline with one Sync (one round trip), which
-- PostgreSQL runs as one implicit transaction.
--
-- pgbench variables are numbers, so a random row number is mapped to a seeded user's uuid
-- through bench_users(n, id), which bench/api.sh creates; that lookup is one extra primary-key
-- read per transaction the API does not need, so this reference errs on the low side.
-- Run with: pgbench -n -M prepared -D nusers=N -f bench/list.sql
\set n random(1, :nusers)
SELECT id AS uid FROM bench_users WHERE n = :n \gset
\startpipeline
SELECT set_config('app.user_id', :uid, true);
SELECT id, title, description, completed, due_at, created_at, updated_at FROM tasks WHERE owner_id = :uid::uuid ORDER BY created_at DESC, id DESC LIMIT 21;
\endpipeline
