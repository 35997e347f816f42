#!/usr/bin/env bash
# core-api benchmark: owner-scoped task listing against the database path's own limit, and GET
# latency while a login flood burns bcrypt. Everything runs on this machine, on loopback, against
# a throwaway PostgreSQL cluster; nothing is built here.
#
#   cargo build --release -p core-api && bench/api.sh
#
# Steps:
#   1. a throwaway PostgreSQL (scripts/pg.sh), `core-api migrate`, a fresh Ed25519 signing key;
#   2. seeding: core-api with a bench config (development overlay; bcrypt cost 4 for this phase
#      only) registers and logs in BENCH_USERS users through the API; TASKS_PER_USER tasks each
#      are inserted with SQL as the superuser (superusers bypass the tasks RLS policy);
#   3. core-api restarted with the configured bcrypt cost (12) for every measurement;
#   4. REPEATS times, interleaved (the table gives the median of the repeats, each figure on
#      its own, and lists every repeat's throughput):
#      a. throughput: wrk -c CONNECTIONS on GET /api/users/{id}/tasks?limit=20, round-robin
#         users;
#      b. reference: pgbench, same concurrency, the same SQL the API sends (bench/list.sql), as
#         the same database role, prepared statements; then at each PGBENCH_SWEEP client count;
#      c. latency: wrk -c LAT_CONNECTIONS at a fixed paced rate below the knee, without and then
#         with a POST /auth/login flood (wrk -c FLOOD_CONNECTIONS, bench/login.lua);
#   5. a markdown table on stdout, also saved as bench/results/api-<UTC time>.md.
#
# Environment (defaults in brackets):
#   CORE_API_BIN [target/release/core-api]   binary under test (copied, so a rebuild mid-run
#                                            cannot swap it)
#   REPEATS [3]            times the measurement sequence runs (medians reported)
#   DURATION [15]          seconds per measured run     WARMUP [3]  seconds of warm-up before
#   BENCH_USERS [200]      seeded users                 TASKS_PER_USER [20]
#   CONNECTIONS [64]       throughput concurrency, for wrk and pgbench alike
#   THREADS [2]            wrk threads and pgbench -j
#   PGBENCH_SWEEP ["2 4 8 16 32"]  further pgbench client counts; the target compares with the
#                          best of these and CONNECTIONS, each the median of its repeats
#                          ("" : CONNECTIONS only)
#   SWEEP_DURATION [8]     seconds per sweep run
#   LAT_CONNECTIONS [16]   latency-run connections      FLOOD_CONNECTIONS [32]  login flood
#   LAT_RPS [peak/4]       offered GET rate of the latency runs; 0 = closed loop (as fast as
#                          the API answers, which measures queueing rather than latency)
#   BENCH_PG_SSLMODE [require]  sslmode of both the API's and pgbench's connections
#   BENCH_POOL_SIZE [development overlay's]      core-api database.pool_size
#   BENCH_STRICT [0]       1: exit 2 when a target is missed
#   BENCH_KEEP [0]         1: keep the temp dir (logs, config, cluster) for inspection
#   BENCH_RESULTS_DIR [bench/results]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"
cd "$repo"

REPEATS=${REPEATS:-3}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
BENCH_USERS=${BENCH_USERS:-200}
TASKS_PER_USER=${TASKS_PER_USER:-20}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PGBENCH_SWEEP=${PGBENCH_SWEEP-2 4 8 16 32}
SWEEP_DURATION=${SWEEP_DURATION:-8}
LAT_CONNECTIONS=${LAT_CONNECTIONS:-16}
FLOOD_CONNECTIONS=${FLOOD_CONNECTIONS:-32}
LAT_RPS=${LAT_RPS:-}
BENCH_PG_SSLMODE=${BENCH_PG_SSLMODE:-require}
BENCH_POOL_SIZE=${BENCH_POOL_SIZE:-}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$repo/bench/results}
CORE_API_BIN=${CORE_API_BIN:-target/release/core-api}

# Targets (the issue): list throughput >= 0.6x pgbench; GET p99 under a login flood <= 2x idle.
TARGET_THROUGHPUT_RATIO=0.6
TARGET_FLOOD_P99_RATIO=2.0

SEED_PASSWORD="bench-password-$(date +%s)"
FLOOD_PASSWORD="flood-password-$(date +%s)"

say() { printf 'bench: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

for v in REPEATS DURATION WARMUP BENCH_USERS TASKS_PER_USER CONNECTIONS THREADS LAT_CONNECTIONS FLOOD_CONNECTIONS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((REPEATS >= 1 && DURATION >= 1 && BENCH_USERS >= 1 && CONNECTIONS >= THREADS && LAT_CONNECTIONS >= THREADS)) ||
  die "need REPEATS >= 1, DURATION >= 1, BENCH_USERS >= 1 and CONNECTIONS, LAT_CONNECTIONS >= THREADS"
[[ -z $LAT_RPS || $LAT_RPS =~ ^[0-9]+$ ]] || die "LAT_RPS must be a whole number (got '$LAT_RPS')"

# ---------------------------------------------------------------------------------------------
# Tools: wrk, pgbench (postgresql-contrib), the PostgreSQL server, python3, curl. Idempotent.

have() { command -v "$1" >/dev/null 2>&1; }
have_pg_tool() {
  local d
  have "$1" && return 0
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/$1 ]] && return 0
  done
  return 1
}

ensure_tools() {
  local pkgs=()
  have wrk || pkgs+=(wrk)
  have_pg_tool pgbench || pkgs+=(postgresql-contrib)
  { have_pg_tool initdb && have_pg_tool pg_ctl && have_pg_tool psql; } || pkgs+=(postgresql)
  have python3 || pkgs+=(python3)
  have curl || pkgs+=(curl)
  have openssl || pkgs+=(openssl)
  apt_install "${pkgs[@]}"
}

ensure_tools

if [[ ! -f $CORE_API_BIN ]]; then
  say "no core-api binary at $CORE_API_BIN"
  say "build it first:  cargo build --release -p core-api   (or set CORE_API_BIN)"
  exit 1
fi
bin_label=$CORE_API_BIN
case $CORE_API_BIN in
  */debug/*) build_kind="debug build: the numbers below mean nothing" ;;
  */release/*) build_kind="release build" ;;
  *) build_kind="build profile unknown" ;;
esac

# ---------------------------------------------------------------------------------------------
# Workspace, cleanup.

work=$(mktemp -d /tmp/gh-bench.XXXXXX)
api_pid=
flood_pid=
child_pid=
api_port=
api_log=$work/core-api.log

# shellcheck source=scripts/pg.sh
source "$repo/scripts/pg.sh"

# shellcheck disable=SC2317 # reached through the traps
cleanup() {
  local rc=$?
  trap '' INT TERM
  stop_pid "$child_pid"
  stop_pid "$flood_pid"
  stop_pid "$api_pid"
  pg_stop "$work/pg"
  if [[ $BENCH_KEEP == 1 || $rc -ne 0 ]]; then
    say "kept $work (logs: $api_log, $work/pg/postgres.log)"
    [[ $BENCH_KEEP == 1 ]] || say "remove it with: rm -rf $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT
trap 'exit 143' TERM

# The binary may be rebuilt by someone else while we run: take a private copy, retrying a few
# times in case it is being replaced right now.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  if cp "$CORE_API_BIN" "$work/core-api" 2>/dev/null && "$work/core-api" --version >/dev/null 2>&1; then
    break
  fi
  ((attempt < 10)) || die "cannot copy a working $CORE_API_BIN"
  sleep 2
done
api=$work/core-api
say "binary: $bin_label ($("$api" --version), $build_kind)"

# ---------------------------------------------------------------------------------------------
# PostgreSQL.

pg_start "$work/pg" || {
  [[ -f $work/pg/postgres.log ]] && tail -n 30 "$work/pg/postgres.log" >&2
  die "PostgreSQL did not start"
}
pg_bin=$(pg_bin_dir)
psql_bin=$pg_bin/psql
pgbench_bin=$pg_bin/pgbench
[[ -x $pgbench_bin ]] || pgbench_bin=$(command -v pgbench)

app_url="$DATABASE_URL?sslmode=$BENCH_PG_SSLMODE"
# The superuser, but in the application database (TEST_PG_ADMIN_URL names `postgres`).
admin_url="${TEST_PG_ADMIN_URL%/*}/gatehouse?sslmode=$BENCH_PG_SSLMODE"

psql_admin() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$admin_url"; }
psql_app() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$app_url" "$@"; }

# ---------------------------------------------------------------------------------------------
# Configuration: the committed base file and development overlay, copied and adjusted.

cfg_dir=$work/config
mkdir -p "$cfg_dir"
cp config/core-api.toml config/core-api.development.toml "$cfg_dir/"
cp config/core-api.development.toml "$cfg_dir/development.orig.toml"
cfg=$cfg_dir/core-api.toml

# set_overlay KEY=VALUE...: rewrite the temp development overlay from the committed one plus
# these TOML values (dotted keys, values as TOML literals). Existing keys are replaced in place,
# missing tables are appended; the result is parsed back to check it.
set_overlay() {
  python3 - "$cfg_dir/development.orig.toml" "$cfg_dir/core-api.development.toml" "$@" <<'PY'
import re, sys, tomllib
src, dst, *pairs = sys.argv[1:]
lines = open(src, encoding="utf-8").read().splitlines()
wanted = {}
for p in pairs:
    key, value = p.split("=", 1)
    table, name = key.rsplit(".", 1)
    wanted.setdefault(table, {})[name] = value

def table_span(table):
    start = None
    for i, line in enumerate(lines):
        m = re.match(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if m:
            if start is not None:
                return start, i
            if m.group(1).strip() == table:
                start = i
    return (start, len(lines)) if start is not None else None

for table, values in wanted.items():
    span = table_span(table)
    if span is None:
        lines += ["", f"[{table}]"] + [f"{k} = {v}" for k, v in values.items()]
        continue
    start, end = span
    for k, v in values.items():
        for i in range(start + 1, end):
            if re.match(rf"^\s*{re.escape(k)}\s*=", lines[i]):
                lines[i] = f"{k} = {v}"
                break
        else:
            lines.insert(start + 1, f"{k} = {v}")
            end += 1
text = "\n".join(lines) + "\n"
parsed = tomllib.loads(text)
for table, values in wanted.items():
    for k, v in values.items():
        assert parsed[table][k] == tomllib.loads(f"x = {v}")["x"], (table, k)
open(dst, "w", encoding="utf-8").write(text)
PY
}

overlay_common=(
  "log.level=\"warn\""
  # The per-account login limits (10 failures a minute per client, 100 an hour from all) would
  # turn the flood into cheap 429s; the flood is there to load the API with bcrypt work, so
  # they are lifted for the benchmark (the hourly one may not be below the per-minute one).
  "auth.login_attempts_per_minute=1000000"
  "auth.login_account_failures_per_hour=1000000"
  # Tokens minted while seeding must outlive every run, whatever DURATION is.
  "auth.access_ttl_seconds=3600"
)
[[ -z $BENCH_POOL_SIZE ]] || overlay_common+=("database.pool_size=$BENCH_POOL_SIZE")

api_base() { printf 'http://127.0.0.1:%s' "$api_port"; }

# run_child OUT CMD...: run a load generator in the background and wait for it, so that a
# TERM/INT reaches our trap at once (bash defers traps while a foreground child runs) and the
# cleanup can stop the child too.
run_child() {
  local out=$1 rc=0
  "${@:2}" >"$out" 2>&1 &
  child_pid=$!
  wait "$child_pid" || rc=$?
  child_pid=
  return "$rc"
}

start_api() {
  local phase=$1 i
  api_port=$(free_port)
  set_overlay "${overlay_common[@]}" "server.listen=\"127.0.0.1:$api_port\"" "${@:2}" ||
    die "could not write the bench overlay"
  printf '\n===== core-api serve (%s) on 127.0.0.1:%s =====\n' "$phase" "$api_port" >>"$api_log"
  # PORT would override server.listen with 0.0.0.0:PORT.
  env -u PORT APP_ENV=development DATABASE_URL="$app_url" JWT_SIGNING_KEY="$jwt_key" \
    "$api" serve --config "$cfg" >>"$api_log" 2>&1 &
  api_pid=$!
  # A debug build spends a while on the start-up bcrypt (the dummy hash) at cost 12.
  for ((i = 0; i < 1200; i++)); do
    if ! kill -0 "$api_pid" 2>/dev/null; then
      tail -n 30 "$api_log" >&2
      api_pid=
      die "core-api exited during start-up"
    fi
    if curl -fsS -o /dev/null --max-time 2 "$(api_base)/healthz" 2>/dev/null; then
      say "core-api ($phase) listening on $(api_base)"
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$api_log" >&2
  die "core-api did not answer /healthz within 120 s"
}

stop_api() {
  stop_pid "$api_pid"
  api_pid=
}

jwt_key=$("$api" keygen) || die "core-api keygen failed"

say "migrating"
env -u PORT APP_ENV=development DATABASE_URL="$app_url" JWT_SIGNING_KEY="$jwt_key" \
  "$api" migrate --config "$cfg" >>"$api_log" 2>&1 || {
  tail -n 20 "$api_log" >&2
  die "core-api migrate failed"
}

# ---------------------------------------------------------------------------------------------
# Seeding. bcrypt cost 4 for this phase only, so that BENCH_USERS registrations and logins take
# seconds, not minutes; every measurement below runs with the configured cost.

users_file=$work/users.txt
start_api seed "auth.bcrypt_cost=4" "auth.insecure_test_bcrypt=true"

say "registering and logging in $BENCH_USERS users"
python3 - "$(api_base)" "$BENCH_USERS" "$SEED_PASSWORD" "$users_file" <<'PY'
import concurrent.futures, json, sys, time, urllib.error, urllib.request

base, count, password, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def post(path, body):
    data = json.dumps(body).encode()
    for attempt in range(20):
        req = urllib.request.Request(base + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            if e.code in (429, 503):  # hashing saturated or rate-limited: back off, retry
                time.sleep(0.2 * (attempt + 1))
                continue
            raise SystemExit(f"POST {path} -> {e.code}: {e.read()[:300]!r}")
    raise SystemExit(f"POST {path}: still 429/503 after retries")

def seed(i):
    email = f"bench-{i:06d}@bench.example.com"
    status, user = post("/auth/register", {"email": email, "password": password})
    if status != 201:
        raise SystemExit(f"register {email} -> {status}")
    status, pair = post("/auth/login", {"email": email, "password": password})
    if status != 200:
        raise SystemExit(f"login {email} -> {status}")
    return user["id"], pair["access_token"]

with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
    pairs = list(pool.map(seed, range(1, count + 1)))
with open(out, "w") as f:
    for uid, token in pairs:
        f.write(f"{uid} {token}\n")
PY
[[ $(wc -l <"$users_file") -eq $BENCH_USERS ]] || die "seeding wrote $(wc -l <"$users_file") of $BENCH_USERS users"

say "inserting $TASKS_PER_USER tasks per user (SQL, as the superuser)"
psql_admin <<SQL
INSERT INTO tasks (owner_id, title, description, completed, due_at, created_at, updated_at)
SELECT u.id,
       'Benchmark task ' || g,
       'Seeded by bench/api.sh: task ' || g || ' of ' || u.email,
       g % 3 = 0,
       CASE WHEN g % 2 = 0 THEN now() + g * interval '1 day' END,
       now() - g * interval '1 minute',
       now() - g * interval '1 minute'
FROM users u CROSS JOIN generate_series(1, $TASKS_PER_USER) AS g
WHERE u.email LIKE 'bench-%@bench.example.com';
VACUUM ANALYZE users;
VACUUM ANALYZE tasks;
SQL

# pgbench's map from a row number to a seeded user, owned by the application role.
psql_app <<'SQL'
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_users;
CREATE TABLE bench_users (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bench_users (n, id)
SELECT row_number() OVER (ORDER BY id), id FROM users WHERE email LIKE 'bench-%@bench.example.com';
ANALYZE bench_users;
SQL
nusers=$(psql_app -At -c 'SELECT count(*) FROM bench_users')
[[ $nusers -eq $BENCH_USERS ]] || die "bench_users has $nusers rows, expected $BENCH_USERS"

# ---------------------------------------------------------------------------------------------
# Measurement phase: the configured bcrypt cost (12 in the base config).

stop_api
start_api measure

say "registering the login-flood account (one bcrypt at the configured cost)"
flood_email="flood-$(date +%s)@bench.example.com"
code=$(curl -sS -o "$work/flood-register.json" -w '%{http_code}' --max-time 120 \
  -H 'Content-Type: application/json' \
  -d "{\"email\":\"$flood_email\",\"password\":\"$FLOOD_PASSWORD\"}" "$(api_base)/auth/register")
[[ $code == 201 ]] || die "registering $flood_email -> $code: $(cat "$work/flood-register.json")"
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 120 \
  -H 'Content-Type: application/json' \
  -d "{\"email\":\"$flood_email\",\"password\":\"$FLOOD_PASSWORD\"}" "$(api_base)/auth/login")
[[ $code == 200 ]] || die "logging in $flood_email -> $code"

# One request by hand: the seeded tokens work across the restart and a page has the tasks.
read -r first_id first_token <"$users_file"
curl -fsS --max-time 30 -H "Authorization: Bearer $first_token" \
  "$(api_base)/api/users/$first_id/tasks?limit=20" >"$work/sample.json" ||
  die "GET /api/users/$first_id/tasks failed"
items=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["items"]))' "$work/sample.json")
expect=$((TASKS_PER_USER < 20 ? TASKS_PER_USER : 20))
[[ $items -eq $expect ]] || die "sample page has $items items, expected $expect"

# ---------------------------------------------------------------------------------------------
# wrk helpers.

export BENCH_USERS_FILE=$users_file

# run_wrk OUT CONNECTIONS SECONDS SCRIPT DELAY_MS: DELAY_MS > 0 paces each connection
# (bench/list.lua), 0 is closed loop.
run_wrk() {
  local out=$1 conns=$2 secs=$3 script=$4 delay_ms=$5
  run_child "$out" env BENCH_DELAY_MS="$delay_ms" \
    wrk -t"$THREADS" -c"$conns" -d"${secs}s" --latency -s "$script" "$(api_base)" || {
    cat "$out" >&2
    die "wrk failed"
  }
}

check_wrk() {
  local out=$1 what=$2 bad
  bad=$(($(wrk_value "$out" non2xx) + $(wrk_value "$out" errors)))
  if ((bad > 0)); then
    cat "$out" >&2
    say "WARNING: $what: $bad non-2xx responses or socket errors"
    warnings+=("$what: $bad non-2xx responses or socket errors")
  fi
}
warnings=()

# ---------------------------------------------------------------------------------------------
# The pgbench reference and its sanity check.

run_pgbench() {
  local out=$1 secs=$2 clients=${3:-$CONNECTIONS}
  local jobs=$((clients < THREADS ? clients : THREADS))
  run_child "$out" "$pgbench_bin" -n -M prepared -c "$clients" -j "$jobs" -T "$secs" \
    -D nusers="$BENCH_USERS" -f bench/list.sql "$app_url" || {
    cat "$out" >&2
    die "pgbench failed"
  }
}

pgbench_tps() {
  local v
  v=$(awk '/^tps = .*without initial connection time/ { print $3 }' "$1")
  [[ -n $v ]] || {
    cat "$1" >&2
    die "could not read tps from pgbench ($1)"
  }
  printf '%s' "$v"
}

# First prove that the reference does the API's work: with the identity set in the
# pipeline's implicit transaction, row-level security lets each user's page through (a wrong
# identity would make pgbench fast at reading nothing). A wrong count divides by zero and fails
# the run.
cat >"$work/verify.sql" <<SQL
\\set n random(1, :nusers)
SELECT id AS uid FROM bench_users WHERE n = :n \\gset
\\startpipeline
SELECT set_config('app.user_id', :uid, true);
SELECT 1 / (count(*) = $expect)::int FROM (SELECT id FROM tasks WHERE owner_id = :uid::uuid ORDER BY created_at DESC, id DESC LIMIT 21) s;
\\endpipeline
SQL
"$pgbench_bin" -n -M prepared -c 2 -j 1 -t 20 -D nusers="$BENCH_USERS" -f "$work/verify.sql" \
  "$app_url" >"$work/pgbench-verify.txt" 2>&1 || {
  cat "$work/pgbench-verify.txt" >&2
  die "pgbench sanity check failed: the reference transaction does not see each user's $expect tasks"
}
grep -q '^number of transactions actually processed: 40/40' "$work/pgbench-verify.txt" || {
  cat "$work/pgbench-verify.txt" >&2
  die "pgbench sanity check failed"
}

# ---------------------------------------------------------------------------------------------
# Measurement: the whole sequence REPEATS times, so that a disturbance on this shared machine
# hits one repeat of each side rather than every run of one; the report gives medians.
#   1. throughput: core-api, wrk -c CONNECTIONS;
#   2. reference: pgbench at CONNECTIONS, then at each PGBENCH_SWEEP client count;
#   3. GET latency at a paced rate below the knee, without and then with a login flood.

clk_tck=$(getconf CLK_TCK)
rep_api_rps=() rep_api_cpu_user=() rep_api_cpu_sys=() rep_api_p50=() rep_api_p99=()
rep_pg_tps=() rep_pg_lat=() rep_idle_p50=() rep_idle_p99=() rep_idle_rps=()
rep_loaded_p50=() rep_loaded_p99=() rep_loaded_rps=() rep_flood_rps=() rep_flood_p50=()
declare -A sweep_runs=()
flood_statuses=
lat_mode=

for ((rep = 1; rep <= REPEATS; rep++)); do
  say "repeat $rep of $REPEATS"

  # 1. Throughput.
  if ((WARMUP > 0)); then
    run_wrk "$work/wrk-warmup.txt" "$CONNECTIONS" "$WARMUP" bench/list.lua 0
  fi
  say "core-api list throughput: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s"
  out=$work/wrk-throughput-$rep.txt
  read -r api_u0 api_s0 < <(cpu_ticks "$api_pid")
  run_wrk "$out" "$CONNECTIONS" "$DURATION" bench/list.lua 0
  read -r api_u1 api_s1 < <(cpu_ticks "$api_pid")
  check_wrk "$out" "throughput run $rep"
  requests=$(wrk_value "$out" requests)
  rep_api_rps+=("$(wrk_value "$out" rps)")
  # core-api's own CPU time per request in that run (user + system), in µs.
  rep_api_cpu_user+=("$(calc "($api_u1 - $api_u0) * 1000000 / $clk_tck / $requests")")
  rep_api_cpu_sys+=("$(calc "($api_s1 - $api_s0) * 1000000 / $clk_tck / $requests")")
  rep_api_p50+=("$(wrk_value "$out" p50)")
  rep_api_p99+=("$(wrk_value "$out" p99)")

  # 2. Reference: pgbench at the same concurrency, then its own best. 64 clients on 2 cores
  # is past PostgreSQL's knee (the API itself multiplexes onto a pool of a few connections), so
  # the target compares with the best rate over a sweep of client counts.
  if ((WARMUP > 0)); then
    run_pgbench "$work/pgbench-warmup.txt" "$WARMUP"
  fi
  say "pgbench reference: -M prepared -c $CONNECTIONS -j $THREADS -T $DURATION"
  out=$work/pgbench-$rep.txt
  run_pgbench "$out" "$DURATION"
  rep_pg_tps+=("$(pgbench_tps "$out")")
  rep_pg_lat+=("$(awk '/^latency average = / { print $4 }' "$out")")
  pg_failed=$(awk '/^number of failed transactions:/ { print $5 }' "$out")
  if [[ -n $pg_failed && $pg_failed != 0 ]]; then
    warnings+=("pgbench (repeat $rep): $pg_failed failed transactions")
  fi
  for c in $PGBENCH_SWEEP; do
    say "pgbench sweep: -c $c -T $SWEEP_DURATION"
    run_pgbench "$work/pgbench-sweep-$c-$rep.txt" "$SWEEP_DURATION" "$c"
    sweep_runs[$c]+=" $(pgbench_tps "$work/pgbench-sweep-$c-$rep.txt")"
  done

  # 3. GET latency without and with a login flood, at a paced rate below the knee (a quarter
  # of the first repeat's throughput unless LAT_RPS says otherwise).
  if [[ -z $LAT_RPS ]]; then
    LAT_RPS=$(awk -v r="${rep_api_rps[0]}" 'BEGIN { x = int(r / 4); if (x < 1) x = 1; print x }')
  fi
  if ((LAT_RPS > 0)); then
    # Each connection waits about LAT_CONNECTIONS / LAT_RPS seconds between its requests.
    lat_delay_ms=$(((LAT_CONNECTIONS * 1000 + LAT_RPS / 2) / LAT_RPS))
    ((lat_delay_ms >= 1)) || lat_delay_ms=1
    lat_mode="paced, ~$LAT_RPS req/s offered"
  else
    lat_delay_ms=0
    lat_mode="closed loop"
  fi

  say "GET latency, no flood: wrk -c$LAT_CONNECTIONS -d${DURATION}s ($lat_mode)"
  out=$work/wrk-idle-$rep.txt
  run_wrk "$out" "$LAT_CONNECTIONS" "$DURATION" bench/list.lua "$lat_delay_ms"
  check_wrk "$out" "latency run without flood ($rep)"
  rep_idle_p50+=("$(wrk_value "$out" p50)")
  rep_idle_p99+=("$(wrk_value "$out" p99)")
  rep_idle_rps+=("$(wrk_value "$out" rps)")

  say "GET latency during a login flood: wrk -c$FLOOD_CONNECTIONS POST /auth/login alongside"
  flood_secs=$((DURATION + 2))
  BENCH_LOGIN_EMAIL=$flood_email BENCH_LOGIN_PASSWORD=$FLOOD_PASSWORD BENCH_DELAY_MS=0 \
    wrk -t1 -c"$FLOOD_CONNECTIONS" -d"${flood_secs}s" --latency --timeout 60s \
    -s bench/login.lua "$(api_base)" >"$work/wrk-flood-$rep.txt" 2>&1 &
  flood_pid=$!
  sleep 1 # let the flood fill the hashing queue first
  out=$work/wrk-loaded-$rep.txt
  run_wrk "$out" "$LAT_CONNECTIONS" "$DURATION" bench/list.lua "$lat_delay_ms"
  check_wrk "$out" "latency run during the flood ($rep)"
  wait "$flood_pid" || {
    cat "$work/wrk-flood-$rep.txt" >&2
    die "the login flood (wrk) failed"
  }
  flood_pid=
  rep_loaded_p50+=("$(wrk_value "$out" p50)")
  rep_loaded_p99+=("$(wrk_value "$out" p99)")
  rep_loaded_rps+=("$(wrk_value "$out" rps)")
  rep_flood_rps+=("$(wrk_value "$work/wrk-flood-$rep.txt" rps)")
  rep_flood_p50+=("$(wrk_value "$work/wrk-flood-$rep.txt" p50 || echo 0)")
  flood_statuses+="${flood_statuses:+; }$(sed -n 's/^login-statuses: //p' "$work/wrk-flood-$rep.txt")"
done
[[ -n ${flood_statuses//; /} ]] || flood_statuses="none completed"

# Medians of the repeats, each figure on its own.
api_rps=$(median "${rep_api_rps[@]}")
api_cpu_user=$(median "${rep_api_cpu_user[@]}")
api_cpu_sys=$(median "${rep_api_cpu_sys[@]}")
api_p50=$(median "${rep_api_p50[@]}")
api_p99=$(median "${rep_api_p99[@]}")
pg_tps=$(median "${rep_pg_tps[@]}")
pg_lat=$(median "${rep_pg_lat[@]}")
idle_p50=$(median "${rep_idle_p50[@]}")
idle_p99=$(median "${rep_idle_p99[@]}")
idle_rps=$(median "${rep_idle_rps[@]}")
loaded_p50=$(median "${rep_loaded_p50[@]}")
loaded_p99=$(median "${rep_loaded_p99[@]}")
loaded_rps=$(median "${rep_loaded_rps[@]}")
flood_rps=$(median "${rep_flood_rps[@]}")
flood_p50=$(median "${rep_flood_p50[@]}")
# PostgreSQL's own best: the highest of the per-client-count medians.
declare -A sweep_tps=()
pg_best_tps=$pg_tps
pg_best_clients=$CONNECTIONS
for c in $PGBENCH_SWEEP; do
  # shellcheck disable=SC2086 # the runs are a space-separated list of numbers
  sweep_tps[$c]=$(median ${sweep_runs[$c]})
  if (($(calc "${sweep_tps[$c]} > $pg_best_tps"))); then
    pg_best_tps=${sweep_tps[$c]}
    pg_best_clients=$c
  fi
done

stop_api

# ---------------------------------------------------------------------------------------------
# Report.

# cfg_value TABLE.KEY: the effective value (overlay over base) of the last measured config.
cfg_value() {
  python3 - "$cfg" "$cfg_dir/core-api.development.toml" "$1" <<'PY'
import sys, tomllib
base, overlay, key = sys.argv[1:]
table, name = key.split(".")
value = "default"
for path in (base, overlay):
    with open(path, "rb") as f:
        value = tomllib.load(f).get(table, {}).get(name, value)
print(value)
PY
}

tp_ratio=$(calc "$api_rps / $pg_best_tps")
same_ratio=$(calc "$api_rps / $pg_tps")
p99_ratio=$(calc "($idle_p99 > 0) ? $loaded_p99 / $idle_p99 : 0")
tp_pass=$(pass "$tp_ratio >= $TARGET_THROUGHPUT_RATIO")
p99_pass=$(pass "$idle_p99 > 0 && $p99_ratio <= $TARGET_FLOOD_P99_RATIO")

cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
[[ -n $cpu_model ]] || cpu_model=unknown
pg_version=$("$psql_bin" -X -At -d "$app_url" -c 'SHOW server_version' 2>/dev/null || echo unknown)
wrk_version=$(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }' || true)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  revision+=" (+ uncommitted changes)"
fi
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)

report=$work/report.md
{
  echo "# core-api benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "| metric | core-api | pgbench / reference | ratio | target | pass? |"
  echo "|---|---|---|---|---|---|"
  echo "| owner-scoped list throughput, $CONNECTIONS connections, against pgbench's best | $(fmt "$api_rps" 0) req/s | $(fmt "$pg_best_tps" 0) tps (-c $pg_best_clients) | $(fmt "$tp_ratio" 2)× | ≥ ${TARGET_THROUGHPUT_RATIO}× | $tp_pass |"
  echo "| the same, against pgbench at the same concurrency | $(fmt "$api_rps" 0) req/s | $(fmt "$pg_tps" 0) tps (-c $CONNECTIONS) | $(fmt "$same_ratio" 2)× | – | – |"
  echo "| core-api CPU per list request in that run (user + system) | $(fmt "$(calc "$api_cpu_user + $api_cpu_sys")" 1) µs ($(fmt "$api_cpu_user" 1) + $(fmt "$api_cpu_sys" 1)) | – | – | – | – |"
  echo "| list latency p50 / p99 at $CONNECTIONS connections (peak load) | $(fmt "$api_p50" 2) / $(fmt "$api_p99" 2) ms | ${pg_lat:-?} ms average | – | – | – |"
  echo "| GET p50 / p99, no flood ($LAT_CONNECTIONS conns, $lat_mode) | $(fmt "$idle_p50" 2) / $(fmt "$idle_p99" 2) ms | – | – | reference | – |"
  echo "| GET p50 / p99 during login flood ($FLOOD_CONNECTIONS conns) | $(fmt "$loaded_p50" 2) / $(fmt "$loaded_p99" 2) ms | $(fmt "$idle_p99" 2) ms (p99, no flood) | $(fmt "$p99_ratio" 2)× | ≤ ${TARGET_FLOOD_P99_RATIO}× | $p99_pass |"
  echo "| login flood: POST /auth/login | $(fmt "$flood_rps" 1) req/s, p50 $(fmt "$flood_p50" 0) ms; status (each repeat) $flood_statuses | – | – | – | – |"
  echo
  echo "Median of $REPEATS interleaved repeats (each figure on its own)."
  echo
  line="- Each repeat: core-api"
  for ((i = 0; i < REPEATS; i++)); do
    line+=" $(fmt "${rep_api_rps[$i]}" 0)"
  done
  line+=" req/s; pgbench -c $CONNECTIONS"
  for ((i = 0; i < REPEATS; i++)); do
    line+=" $(fmt "${rep_pg_tps[$i]}" 0)"
  done
  echo "$line tps."
  if ((${#sweep_tps[@]} > 0)); then
    line="- pgbench sweep (${SWEEP_DURATION}s each, -j min(clients, $THREADS)), median (each repeat):"
    for c in $PGBENCH_SWEEP; do
      # shellcheck disable=SC2086 # the runs are a space-separated list of numbers
      line+=" -c $c: $(fmt "${sweep_tps[$c]}" 0) tps ($(printf '%.0f ' ${sweep_runs[$c]} | sed 's/ $//'));"
    done
    echo "${line%;}; -c $CONNECTIONS: $(fmt "$pg_tps" 0) tps (${DURATION}s)."
  fi
  echo "- Machine: $(nproc) CPUs, $cpu_model; $(uname -sr). core-api, PostgreSQL $pg_version, wrk and"
  echo "  pgbench all ran on this same machine over loopback, one after another (nothing pinned)."
  echo "- core-api: $bin_label, $("$api" --version) ($build_kind); revision $revision."
  echo "  APP_ENV=development with bench overrides: log level warn, login limit lifted, database"
  echo "  pool $(cfg_value database.pool_size), bcrypt cost $(cfg_value auth.bcrypt_cost), hashing concurrency $(cfg_value auth.hash_concurrency) (0 = CPUs - 1) at nice $(cfg_value auth.hash_nice);"
  echo "  database connections sslmode=$BENCH_PG_SSLMODE (pgbench too)."
  echo "- Data: $BENCH_USERS users × $TASKS_PER_USER tasks; each request is the next user's"
  echo "  \`GET /api/users/{id}/tasks?limit=20\` with its own bearer token (bench/list.lua);"
  echo "  pgbench runs the same transaction (bench/list.sql) as the same role, -M prepared, -j $THREADS."
  echo "- Runs: ${DURATION}s each after ${WARMUP}s warm-up; wrk ${wrk_version:-?} -t$THREADS. Throughput is closed loop"
  echo "  (as fast as answered); latency runs offer a fixed paced rate (LAT_RPS=$LAT_RPS, 0 = closed loop)."
  echo "  core-api CPU: its utime + stime over the throughput run, per request."
  echo "  During the flood the GET run achieved $(fmt "$loaded_rps" 0) req/s (no flood: $(fmt "$idle_rps" 0) req/s)."
  for w in "${warnings[@]}"; do
    echo "- WARNING: $w"
  done
} >"$report"

echo
cat "$report"
mkdir -p "$BENCH_RESULTS_DIR"
cp "$report" "$BENCH_RESULTS_DIR/api-$stamp.md"
say "saved $BENCH_RESULTS_DIR/api-$stamp.md"

if [[ $BENCH_STRICT == 1 && ($tp_pass != "✅ yes" || $p99_pass != "✅ yes") ]]; then
  say "a target was missed (BENCH_STRICT=1)"
  exit 2
fi
