#!/usr/bin/env python3
"""Check deploy/grafana/gatehouse.json against the metrics Gatehouse exports.

    python3 deploy/grafana/check_dashboard.py [DASHBOARD.json]

Standard library only. Fails (exit 1, one line per problem) when:
  - the file is not JSON, or not schemaVersion 39, or panel ids repeat / panels leave the grid;
  - a panel or query does not use the `datasource` variable;
  - a PromQL expression (panel targets and template-variable queries) names a metric that is
    not in METRICS below (plus `up`), calls an unknown function, uses a label the metric
    does not have (selectors, by/without/on/ignoring lists), or a panel legend names a label
    the query's result does not carry (after `sum by (...)`, only those labels);
  - a gatehouse_gateway_* / gatehouse_api_* / up selector lacks its job="..." matcher;
  - a metric in METRICS is shown nowhere;
  - METRICS no longer matches what gateway/src/metrics.rs and core-api/src/metrics.rs register
    (names, prefixes, labels), so a renamed metric breaks this check instead of the dashboard.
"""

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

JOBS = {"gatehouse_gateway_": "gatehouse-gateway", "gatehouse_api_": "gatehouse-api"}

# Metric name (as queried) -> its own labels. Histograms are queried through _bucket only.
METRICS = {
    "gatehouse_gateway_http_requests_total": {"route", "status"},
    "gatehouse_gateway_http_request_duration_seconds_bucket": {"route", "le"},
    "gatehouse_gateway_rejections_total": {"reason"},
    "gatehouse_gateway_rate_limited_total": {"limit"},
    "gatehouse_gateway_upstream_errors_total": {"upstream", "kind"},
    "gatehouse_gateway_upstream_healthy_targets": {"upstream"},
    "gatehouse_gateway_jwks_refreshes_total": {"outcome"},
    "gatehouse_gateway_reloads_total": {"outcome"},
    "gatehouse_gateway_rate_limit_store_errors_total": {"limit"},
    "gatehouse_gateway_log_lines_dropped_total": set(),
    "gatehouse_gateway_connections_active": {"listener"},
    "gatehouse_gateway_connections_rejected_total": {"listener", "reason"},
    "gatehouse_gateway_certificate_expiry_seconds": {"name"},
    "gatehouse_gateway_acme_renewal_attempts_total": {"name"},
    "gatehouse_gateway_acme_renewal_failures_total": {"name", "reason"},
    "gatehouse_gateway_acme_last_success_timestamp_seconds": {"name"},
    "gatehouse_gateway_acme_http01_requests_total": {"outcome"},
    "gatehouse_gateway_acme_challenge_storage_reads_total": set(),
    "gatehouse_api_http_requests_total": {"route", "method", "status"},
    "gatehouse_api_http_request_duration_seconds_bucket": {"route", "le"},
    "gatehouse_api_auth_failures_total": {"reason"},
    "gatehouse_api_refresh_token_events_total": {"event"},
    "gatehouse_api_db_pool_connections": {"state"},
    "gatehouse_api_server_errors_total": {"type"},
    "gatehouse_api_panics_total": set(),
    "gatehouse_api_db_up": set(),
}
# Prometheus' own per-target series; allowed, not required to match the sources.
EXTRA = {"up": set()}
TARGET_LABELS = {"job", "instance"}

SOURCES = {
    "gatehouse_gateway_": REPO / "gateway/src/metrics.rs",
    "gatehouse_api_": REPO / "core-api/src/metrics.rs",
}

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes",
    "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta",
    "deriv", "floor", "group", "histogram_quantile", "idelta", "increase", "irate",
    "label_replace", "last_over_time", "max", "max_over_time", "min", "min_over_time",
    "quantile", "quantile_over_time", "rate", "resets", "round", "scalar", "sort",
    "sort_desc", "stddev", "stdvar", "sum", "sum_over_time", "time", "timestamp", "topk",
    "vector",
}
AGGREGATIONS = {
    "avg", "bottomk", "count", "count_values", "group", "max", "min", "quantile", "stddev",
    "stdvar", "sum", "topk",
}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


# ------------------------------------------------------------------ sources
def source_metrics():
    """Metric name -> labels, as registered by the two metrics.rs files."""
    found = {}
    for prefix, path in SOURCES.items():
        if not path.is_file():
            problem(str(path), "missing (cannot compare METRICS with the sources)")
            continue
        text = path.read_text()
        m = re.search(r'Registry::new_custom\(\s*Some\("(\w+)"', text)
        if not m or m.group(1) + "_" != prefix:
            problem(str(path), f"registry prefix is not {prefix!r}")
        # Vec metrics: `XxxVec::new( [Histogram]Opts::new("name", ...) [.buckets(..)], &["l", ..] )`
        for m in re.finditer(r'(\w+)Vec::new\(\s*(?:Histogram)?Opts::new\(\s*"(\w+)"(.*?)&\[([^\]]*)\]',
                             text, re.S):
            kind, name, _, labels = m.groups()
            labels = set(re.findall(r'"(\w+)"', labels))
            if kind == "Histogram":
                found[prefix + name + "_bucket"] = labels | {"le"}
            else:
                found[prefix + name] = labels
        # Plain gauges/counters: `IntGauge::new("name", ...)`, `IntCounter::new(...)`, ...
        for m in re.finditer(r'\b(?:Int)?(?:Gauge|Counter)::new\(\s*"(\w+)"', text):
            found[prefix + m.group(1)] = set()
    return found


def check_sources():
    if any(not p.is_file() for p in SOURCES.values()):
        source_metrics()
        return
    src = source_metrics()
    for name in sorted(set(METRICS) | set(src)):
        if name not in src:
            problem("METRICS", f"{name} is not registered in the sources (renamed or removed?)")
        elif name not in METRICS:
            problem("METRICS", f"{name} is registered in the sources but unknown here (add it)")
        elif src[name] != METRICS[name]:
            problem("METRICS", f"{name}: labels {sorted(METRICS[name])} here, "
                               f"{sorted(src[name])} in the sources")


# ------------------------------------------------------------------ PromQL
TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<brace>\{)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<dur>(?:\d+(?:ms|[smhdwy]))+(?![\w:]))
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>(),=])
""", re.X)

MATCHER = re.compile(r"""\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)\s*""")


def parse_matchers(body, where):
    """{a="x", b=~"y"} body -> {label: value}."""
    out, pos = {}, 0
    while pos < len(body):
        m = MATCHER.match(body, pos)
        if not m:
            problem(where, f"cannot parse label matchers {{{body}}}")
            return out
        out[m.group(1)] = (m.group(2), m.group(3)[1:-1])
        pos = m.end()
        if pos < len(body):
            if body[pos] != ",":
                problem(where, f"cannot parse label matchers {{{body}}}")
                return out
            pos += 1
    return out


def close_brace(expr, i):
    """Index of the '}' closing the '{' at i, skipping quoted strings."""
    j, quote = i + 1, None
    while j < len(expr):
        c = expr[j]
        if quote:
            if c == "\\":
                j += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c == "}":
            return j
        j += 1
    return -1


def check_expr(expr, where, used):
    """Check one PromQL expression; return the labels its result can carry (for legends):
    those of its metrics, or only the `by` labels once an aggregation is involved."""
    metrics, grouping, by_labels = [], [], set()
    aggregated = without = False
    pos, prev_ident = 0, None
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            problem(where, f"cannot tokenize at {expr[pos:pos + 20]!r}")
            return set()
        kind, text = m.lastgroup, m.group()
        pos = m.end()
        if kind == "ws":
            continue
        if kind == "brace":
            end = close_brace(expr, m.start())
            if end < 0:
                problem(where, "unclosed '{'")
                return set()
            matchers = parse_matchers(expr[m.start() + 1:end], where)
            pos = end + 1
            if prev_ident is None:
                problem(where, "selector without a metric name")
            else:
                metrics[-1] = (prev_ident, matchers)
            prev_ident = None
            continue
        prev_ident = None
        if kind != "ident":
            continue
        rest = expr[pos:].lstrip()
        if text in LABEL_LISTS:
            if rest.startswith("("):
                close = rest.index(")")
                names = [l.strip() for l in rest[1:close].split(",") if l.strip()]
                grouping += names
                if text == "by":
                    by_labels.update(names)
                without = without or text == "without"
                pos = len(expr) - len(rest) + close + 1
            continue
        if text in KEYWORDS:
            continue
        if text in AGGREGATIONS and re.match(r"(by|without|\()", rest):
            aggregated = True
        if text in AGGREGATIONS and re.match(r"(by|without)\s*\(", rest):
            continue  # sum by (x) (...): the grouping comes first
        if rest.startswith("("):
            if text not in FUNCTIONS:
                problem(where, f"unknown function {text}()")
            continue
        # A metric name.
        metrics.append((text, {}))
        prev_ident = text

    labels_here = set(TARGET_LABELS)
    for name, matchers in metrics:
        known = METRICS.get(name, EXTRA.get(name))
        if known is None:
            problem(where, f"metric {name} is not in the list of exported metrics")
            continue
        used.add(name)
        labels_here |= known
        for label in matchers:
            if label not in known | TARGET_LABELS:
                problem(where, f"{name} has no label {label!r}")
        job = next((j for p, j in JOBS.items() if name.startswith(p)), None)
        if name in EXTRA:
            job = matchers.get("job", (None, None))[1]
            if job not in JOBS.values():
                problem(where, f'{name} needs job="gatehouse-gateway" or job="gatehouse-api"')
                continue
        if matchers.get("job") != ("=", job):
            problem(where, f'{name} needs the matcher job="{job}"')
    for label in grouping:
        if label not in labels_here:
            problem(where, f"grouping label {label!r} belongs to none of the metrics used")
    if aggregated and not without:
        return by_labels & labels_here
    return labels_here


# ------------------------------------------------------------------ dashboard
def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def uses_ds_var(ds):
    return isinstance(ds, dict) and ds.get("uid") in ("${datasource}", "$datasource")


def check_dashboard(path):
    try:
        dash = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        problem(str(path), f"not readable JSON: {e}")
        return
    if dash.get("schemaVersion") != 39:
        problem(str(path), f"schemaVersion is {dash.get('schemaVersion')}, expected 39")

    used = set()
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problem("templating", "needs a variable `datasource` of type datasource, query prometheus")
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        where = f"variable {name}"
        if not uses_ds_var(v.get("datasource")):
            problem(where, "datasource is not ${datasource}")
        queries = [v.get("definition")]
        q = v.get("query")
        queries.append(q.get("query") if isinstance(q, dict) else q)
        for query in filter(None, queries):
            m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.S)
            if not m:
                problem(where, f"expected label_values(<selector>, <label>), got {query!r}")
                continue
            labels = check_expr(m.group(1), where, used)
            if m.group(2) not in labels:
                problem(where, f"label {m.group(2)!r} belongs to none of the metrics used")

    seen_ids = set()
    for p in walk_panels(dash.get("panels", [])):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in seen_ids:
            problem(where, "duplicate panel id")
        seen_ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not (0 <= g.get("x", -1) and g.get("x", 0) + g.get("w", 99) <= 24 and g.get("h", 0) > 0):
            problem(where, f"gridPos out of the 24-column grid: {g}")
        if p.get("type") == "row":
            continue
        if not uses_ds_var(p.get("datasource")):
            problem(where, "datasource is not ${datasource}")
        targets = p.get("targets") or []
        if not targets:
            problem(where, "no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problem(where, f"duplicate refIds {refs}")
        for t in targets:
            twhere = f"{where} [{t.get('refId')}]"
            if not uses_ds_var(t.get("datasource")):
                problem(twhere, "datasource is not ${datasource}")
            expr = t.get("expr")
            if not expr:
                problem(twhere, "no expr")
                continue
            labels = check_expr(expr, twhere, used)
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                if label not in labels:
                    problem(twhere, f"legend uses {{{{{label}}}}}, which the query does not carry")

    for name in sorted(set(METRICS) - used):
        problem(str(path), f"{name} is not shown by any panel")


def main():
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "gatehouse.json"
    check_sources()
    check_dashboard(path)
    for p in problems:
        print(f"check_dashboard: {p}", file=sys.stderr)
    if problems:
        print(f"check_dashboard: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_dashboard: {path.name}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
