#!/usr/bin/env bash
# Helpers the bench scripts share (sourced, not run).

# shellcheck source=scripts/local-ca.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/local-ca.sh"

# wrk_value FILE rps|p50|p99|non2xx|errors|requests: a number from wrk's --latency report
# (latencies in milliseconds).
wrk_value() {
  awk -v want="$2" '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /m$/)  return substr(v, 1, length(v) - 1) * 60000
      if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
      return v + 0
    }
    /^Requests\/sec:/                      { rps = $2 }
    /^ +50%/ && dist                       { p50 = ms($2) }
    /^ +99%/ && dist                       { p99 = ms($2) }
    /Latency Distribution/                 { dist = 1 }
    /Non-2xx or 3xx responses:/            { non2xx = $NF }
    /requests in/                          { requests = $1 }
    /Socket errors:/ {
      gsub(",", ""); errors = $4 + $6 + $8 + $10
    }
    END {
      if (want == "rps") v = rps
      else if (want == "p50") v = p50
      else if (want == "p99") v = p99
      else if (want == "non2xx") v = non2xx + 0
      else if (want == "errors") v = errors + 0
      else if (want == "requests") v = requests + 0
      if (v == "") exit 1
      print v
    }' "$1"
}

# apt_install PKG...: installs the missing Debian packages (none given: nothing to do).
apt_install() {
  (($# == 0)) && return 0
  if [[ $(id -u) -ne 0 ]]; then
    die "missing tools; install them with: sudo apt-get install -y --no-install-recommends $*"
  fi
  say "installing $* (apt-get)"
  local log
  log=$(mktemp)
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "apt-get install $* failed"
  fi
  rm -f "$log"
}

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL; reaps it.
stop_pid() {
  local pid=$1 i
  [[ -n $pid ]] || return 0
  if kill -TERM "$pid" 2>/dev/null; then
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# render TEMPLATE OUT NAME=VALUE...: fill @NAME@ placeholders; any left unfilled is an error.
render() {
  python3 - "$@" <<'PY'
import re, sys
template, out, *pairs = sys.argv[1:]
text = open(template, encoding="utf-8").read()
for p in pairs:
    name, value = p.split("=", 1)
    text = text.replace(f"@{name}@", value)
left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
if left:
    sys.exit(f"{template}: unfilled placeholders {' '.join(left)}")
open(out, "w", encoding="utf-8").write(text)
PY
}

# calc EXPR: awk's value of EXPR (parenthesized, so a comparison is never read as a redirect).
calc() { awk "BEGIN { printf \"%s\", ($1) }"; }
# median V...: the median of numbers (the mean of the middle two for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# fmt VALUE [DECIMALS]: VALUE with DECIMALS (1) digits after the point.
fmt() { awk -v v="$1" -v d="${2:-1}" 'BEGIN { printf "%.*f", d, v }'; }
# pass EXPR: "✅ yes" when awk finds EXPR true, else "❌ no".
pass() { if awk "BEGIN { exit !($1) }"; then echo "✅ yes"; else echo "❌ no"; fi; }

# make_keys DIR CN: in DIR, a throwaway CA and an ECDSA P-256 leaf for localhost/127.0.0.1
# signed by it (ca.pem, leaf.pem, leaf.key, chain.pem = leaf + CA), haproxy.pem (chain + key)
# and an Ed25519 JWT signing key (jwt.key). openssl's output goes to DIR/openssl.log.
make_keys() {
  local dir=$1 cn=$2
  {
    local_ca_and_leaf "$dir" "$cn" 2 &&
      (
        cd "$dir"
        cat leaf.pem ca.pem >chain.pem
        cat chain.pem leaf.key >haproxy.pem
        openssl genpkey -algorithm ed25519 -out jwt.key
        chmod 600 ./*.key haproxy.pem
      )
  } >"$dir/openssl.log" 2>&1
}

# make_token KEY KID ISSUER AUDIENCE OUT: the JWKS of the Ed25519 KEY (OUT/jwks.json) and an
# access token it signed (EdDSA, typ at+jwt, six hours; OUT/token), plus the same token with a
# tampered signature (OUT/token-tampered). Python's stdlib for JSON/base64, `openssl pkeyutl
# -rawin` for the signature.
make_token() {
  python3 - "$@" <<'PY'
import base64, json, subprocess, sys, time
key, kid, iss, aud, out = sys.argv[1:]

def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()

der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                     check=True, capture_output=True).stdout
jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                  "x": b64(der[-32:])}]}
now = int(time.time())
header = b64(compact({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}))
claims = b64(compact({"iss": iss, "aud": aud, "sub": "bench-user-1", "iat": now, "nbf": now,
                      "exp": now + 6 * 3600}))
signing_input = f"{header}.{claims}"
# Ed25519 signs the whole message at once: pkeyutl needs it in a file, not a pipe.
with open(f"{out}/signing-input", "w") as f:
    f.write(signing_input)
sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", key, "-rawin", "-in",
                      f"{out}/signing-input"], check=True, capture_output=True).stdout
assert len(sig) == 64, "an Ed25519 signature has 64 bytes"
bad = bytes([sig[0] ^ 1]) + sig[1:]
with open(f"{out}/jwks.json", "w") as f:
    f.write(json.dumps(jwks, separators=(",", ":")))
with open(f"{out}/token", "w") as f:
    f.write(f"{signing_input}.{b64(sig)}\n")
with open(f"{out}/token-tampered", "w") as f:
    f.write(f"{signing_input}.{b64(bad)}\n")
PY
}

# cpu_ticks PID...: "user system" time in clock ticks (utime, stime), summed.
cpu_ticks() {
  local p u=0 s=0 v w
  for p in "$@"; do
    read -r v w < <(sed 's/^.*) //' "/proc/$p/stat" | awk '{ print $12, $13 }') || { v=0 w=0; }
    u=$((u + v))
    s=$((s + w))
  done
  echo "$u $s"
}
