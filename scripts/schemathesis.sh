#!/usr/bin/env bash
# Schemathesis (property-based API testing from the OpenAPI document) against the real core
# API: every check, bounded in time. scripts/test.sh runs it after `cargo test`; it fails on
# any server error, any response that violates core-api/openapi.json, any schema-valid request
# refused or schema-invalid request accepted, any panic in the API's log, and any connection of
# the API left inside a transaction.
#
#   scripts/schemathesis.sh            (needs DATABASE_URL and TEST_PG_ADMIN_URL from scripts/pg.sh)
#
# Knobs: CORE_API_BIN (default target/debug/core-api), ST_MAX_TIME (seconds, default 60),
# ST_SEED (default: random, printed so a failure can be replayed), ST_KEEP=1 keeps the work dir.
#
# Schemathesis comes from PyPI, pinned, into a venv outside the repository:
# ${XDG_CACHE_HOME:-~/.cache}/gatehouse/schemathesis (delete it to reinstall).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIN=schemathesis==4.32.5
tools=${XDG_CACHE_HOME:-$HOME/.cache}/gatehouse/schemathesis
venv=$tools/venv
bin=${CORE_API_BIN:-$repo/target/debug/core-api}
max_time=${ST_MAX_TIME:-60}

say() { printf 'schemathesis: %s\n' "$*"; }
die() { printf 'schemathesis: %s\n' "$*" >&2; exit 1; }

[[ -x $bin ]] || die "$bin not found: run cargo build -p core-api (or set CORE_API_BIN)"
: "${DATABASE_URL:?DATABASE_URL is not set (source the env of scripts/pg.sh)}"
: "${TEST_PG_ADMIN_URL:?TEST_PG_ADMIN_URL is not set (source the env of scripts/pg.sh)}"

# ---- the interpreter: CPython 3.11 turns a RecursionError that hypothesis catches (while it
# describes a filter lambda) into "AST constructor recursion depth mismatch": gh-106905, fixed
# in 3.11.5 for one path, and still seen with 3.11.7 here. 3.12 reworked that check. Prefer the
# newest python3 the machine has (these machines carry 3.12 and 3.13 through pyenv, whose shims
# answer only for the active version, so the interpreters are looked up directly), else
# Debian's.
pick_python() {
  local c
  for c in python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3 \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3 python3 /usr/bin/python3; do
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      command -v "$c"
      return
    fi
  done
  for c in python3 /usr/bin/python3; do
    if "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 11, 5) else 1)' 2>/dev/null; then
      command -v "$c"
      return
    fi
  done
  echo /usr/bin/python3
}
python=$(pick_python)
stamp="$PIN $("$python" -c 'import sys; print(sys.version.split()[0])')"

# ---- the tool: a venv whose stamp records the pin and the interpreter.
mkdir -p "$tools"
exec 9>"$tools/.lock"
flock 9
if [[ ! -x $venv/bin/st || $(cat "$venv/.gatehouse-stamp" 2>/dev/null) != "$stamp" ]]; then
  say "installing $PIN into $venv ($python)"
  rm -rf "$venv"
  "$python" -m venv "$venv" >"$tools/install.log" 2>&1 || { cat "$tools/install.log" >&2; die "$python -m venv failed (apt-get install python3-venv)"; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input "$PIN" >>"$tools/install.log" 2>&1 \
    || { tail -n 30 "$tools/install.log" >&2; rm -rf "$venv"; die "pip install $PIN failed"; }
  echo "$stamp" >"$venv/.gatehouse-stamp"
fi
flock -u 9

# ---- a fresh database, the API on a free loopback port.
work=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-st.XXXXXX")
db="st_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
api_pid=
cleanup() {
  local rc=$?
  [[ -n $api_pid ]] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
  psql -X -q "$TEST_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  if [[ $rc -ne 0 || ${ST_KEEP:-} == 1 ]]; then
    say "work dir kept: $work (api.log, report)"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

psql -X -q -v ON_ERROR_STOP=1 "$TEST_PG_ADMIN_URL" -c "CREATE DATABASE $db OWNER gatehouse" >/dev/null
db_url=$(python3 -c 'import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$DATABASE_URL" "$db")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cp "$repo/config/core-api.toml" "$work/core-api.toml"
# The development overlay of this run: bcrypt cost 4 (documented test setting, refused outside
# development) so that registrations do not dominate the time budget.
cat >"$work/core-api.development.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[auth]
bcrypt_cost = 4
insecure_test_bcrypt = true
[log]
format = "json"
level = "info"
EOF
"$bin" keygen >"$work/key.pem"
export APP_ENV=development DATABASE_URL=$db_url JWT_SIGNING_KEY_FILE=$work/key.pem
"$bin" --config "$work/core-api.toml" migrate >"$work/migrate.log" 2>&1 || { cat "$work/migrate.log" >&2; die "migrate failed"; }
"$bin" --config "$work/core-api.toml" serve >"$work/api.log" 2>&1 &
api_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$api_pid" 2>/dev/null || { cat "$work/api.log" >&2; die "core-api exited"; }
  sleep 0.1
done
curl -fsS "$base/readyz" >/dev/null || { tail -n 20 "$work/api.log" >&2; die "core-api not ready"; }

# ---- a user of its own and its token.
creds='{"email":"schemathesis@example.com","password":"correct horse battery staple"}'
curl -fsS -H 'content-type: application/json' -d "$creds" "$base/auth/register" >"$work/user.json"
curl -fsS -H 'content-type: application/json' -d "$creds" "$base/auth/login" >"$work/login.json"
ST_USER_ID=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$work/user.json")
ST_TOKEN=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["access_token"])' "$work/login.json")
export ST_USER_ID ST_TOKEN

seed=${ST_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
say "running every check for ${max_time}s against $base (seed $seed)"
cd "$work"
status=0
"$venv/bin/st" --config-file "$repo/core-api/tests/schemathesis.toml" run "$repo/core-api/openapi.json" \
  --url "$base" --checks all --max-time "$max_time" --workers 2 --seed "$seed" \
  --output-truncate false --report junit --report-dir "$work/report" >"$work/st.out" 2>&1 || status=$?
grep -E '^(Test cases|  [0-9]+ generated)|failures?,|passed' "$work/st.out" | tail -n 3 || true
if [[ $status -ne 0 ]]; then
  cat "$work/st.out" >&2
  die "schemathesis found failures (replay with ST_SEED=$seed)"
fi

# ---- what must never happen, whatever schemathesis asserted.
if grep -q '"panicked\|handler panicked' "$work/api.log"; then
  grep 'panicked' "$work/api.log" | head -n 5 >&2
  die "the API panicked during the run"
fi
if grep -q '"status":5[0-9][0-9]' "$work/api.log"; then
  grep '"status":5[0-9][0-9]' "$work/api.log" | head -n 5 >&2
  die "the API answered a 5xx during the run"
fi
open_tx=$(psql -X -qAt "$TEST_PG_ADMIN_URL" -c "SELECT count(*) FROM pg_stat_activity
  WHERE datname = '$db' AND state LIKE 'idle in transaction%'")
[[ $open_tx == 0 ]] || die "$open_tx connection(s) of the API left inside a transaction"
say "ok: 0 server errors, 0 schema violations, no panic, no open transaction"
