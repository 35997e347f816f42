#!/usr/bin/env python3
"""Project rules for the deployment files, the things an operator would trip over.

    python3 scripts/check_deploy.py                  # project rules (needs PyYAML only)
    python3 scripts/check_deploy.py --self-test      # prove every rule fires on broken copies

scripts/check-deploy.sh runs it from its tool venv with two schema steps added:
--k8s-version V (every manifest in deploy/k8s against Kubernetes V's OpenAPI schemas, strict,
via the kubernetes-validate package) and --compose-schema (compose.yaml against the official
compose-spec JSON schema that the check-jsonschema package vendors).

Rules:
  env      every ${VAR} of config/{gateway,core-api}*.toml is documented (`VAR=` or `# VAR=`)
           in each deploy/env/*.env.example; variables there, and the environment that
           compose.yaml, deploy/k8s, render.yaml and fly.toml give Gatehouse containers, are
           read by the configuration or the code.
  k8s      every Deployment container has readiness and liveness probes, cpu/memory requests,
           runAsNonRoot, readOnlyRootFilesystem and an image (security, requests and image for
           Jobs too); Service/PDB/HPA/NetworkPolicy selectors and scaleTargetRefs match a
           Deployment; an HPA targets the API; NetworkPolicies admit only the gateway, only to
           the API port; a NetworkPolicy covers the gateway's metrics port and admits it only
           from selected namespaces/pods (never from everywhere); kustomization.yaml lists
           every manifest (*.example.yaml commented only) and rewrites every image.
  compose  depends_on targets exist, `service_healthy` ones have a healthcheck; the API and
           PostgreSQL publish no host port; every secret used is declared.
  paas     render.yaml, railway.json and fly.toml parse; the Dockerfiles they name exist;
           fly.toml's internal_port equals the PORT it sets.
  secrets  nothing under deploy/ nor compose.yaml, render.yaml, railway.json, fly.toml holds a
           PEM private key or a URL with a literal password (placeholders and loopback hosts
           are fine).
Each problem is printed as `FILE: problem`; the exit status is 1 when there is any.
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import re
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("check_deploy.py: PyYAML is missing (apt-get install python3-yaml, "
             "or run scripts/check-deploy.sh, which brings its own)")

# Read by the code itself, not through a ${VAR} of the configuration (the code scan below
# finds most of them; tracing reads RUST_LOG without naming it in this repository).
CODE_VARS = {"APP_ENV", "RUST_LOG", "GATEWAY_CONFIG", "CORE_API_CONFIG",
             "GATEWAY_UPGRADE_SOCK", "GATEWAY_PID_FILE", "PORT"}
CODE_DIRS = ("common/src", "core-api/src", "gateway/src")
CONFIG_GLOBS = ("config/gateway*.toml", "config/core-api*.toml")
PAAS_FILES = ("compose.yaml", "render.yaml", "railway.json", "fly.toml")
API_COMPONENT, GATEWAY_COMPONENT = "api", "gateway"
COMPONENT = "app.kubernetes.io/component"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet"}
VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+=][^}]*)?\}")
ENV_LINE = re.compile(r"^\s*(?:#\s*)?([A-Za-z_][A-Za-z0-9_]*)=")


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.notes: list[str] = []

    def err(self, file: str | Path, msg: str) -> None:
        self.errors.append(f"{file}: {msg}")


def dig(obj, *keys, default=None):
    """obj[k1][k2]..., or default when a step is missing or not a mapping/list."""
    for k in keys:
        if isinstance(obj, dict) and k in obj:
            obj = obj[k]
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return default
    return obj


def as_list(x) -> list:
    return x if isinstance(x, list) else []


def as_dict(x) -> dict:
    return x if isinstance(x, dict) else {}


# ------------------------------------------------------------------------------------ loading

class Repo:
    """The parsed deployment files of one checkout (or of a self-test copy)."""

    def __init__(self, root: Path, rep: Report) -> None:
        self.root, self.rep = root, rep
        # (relative path, kind/name, document) for every manifest but kustomization.yaml
        self.k8s: list[tuple[str, dict]] = []
        self.kustomization: dict | None = None
        k8s_dir = root / "deploy/k8s"
        for p in sorted(k8s_dir.glob("*.y*ml")) if k8s_dir.is_dir() else []:
            rel = self.rel(p)
            docs = self.load_yaml(p, all_docs=True)
            if docs is None:
                continue
            if p.name == "kustomization.yaml":
                self.kustomization = docs[0] if docs and isinstance(docs[0], dict) else {}
                continue
            for d in docs:
                if d is None:
                    continue
                if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                    rep.err(rel, "a document without apiVersion/kind")
                    continue
                self.k8s.append((rel, d))
        self.compose = self.load_yaml(root / "compose.yaml") if (root / "compose.yaml").exists() else None

    def rel(self, p: Path) -> str:
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def load_yaml(self, p: Path, all_docs: bool = False):
        try:
            with open(p, encoding="utf-8") as f:
                return list(yaml.safe_load_all(f)) if all_docs else yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            self.rep.err(self.rel(p), f"does not parse as YAML: {one_line(e)}")
            return None

    def of_kind(self, *kinds: str):
        return [(f, d) for f, d in self.k8s if d.get("kind") in kinds]


def one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def kn(d: dict) -> str:
    return f"{d.get('kind')} {dig(d, 'metadata', 'name', default='?')}"


# ---------------------------------------------------------------------------------- env rule

def config_vars(root: Path, rep: Report) -> dict[str, str]:
    """VAR -> first config file that interpolates it (string values only, comments skipped)."""
    found: dict[str, str] = {}

    def walk(v, rel):
        if isinstance(v, str):
            for m in VAR_REF.finditer(v):
                found.setdefault(m.group(1), rel)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x, rel)
        elif isinstance(v, list):
            for x in v:
                walk(x, rel)

    files = sorted({p for g in CONFIG_GLOBS for p in root.glob(g)})
    if not files:
        rep.err("config/", "no config/gateway*.toml or config/core-api*.toml found")
    for p in files:
        rel = str(p.relative_to(root))
        try:
            walk(tomllib.loads(p.read_text(encoding="utf-8")), rel)
        except (OSError, tomllib.TOMLDecodeError) as e:
            rep.err(rel, f"does not parse as TOML: {one_line(e)}")
    return found


def code_vars(root: Path) -> set[str]:
    """Variables the Rust code reads by name: std::env::var("X"), clap's env = "X"."""
    names = set(CODE_VARS)
    pat = re.compile(r'(?:env::var(?:_os)?\(\s*|\benv\s*=\s*)"([A-Z][A-Z0-9_]*)"')
    for d in CODE_DIRS:
        for p in (root / d).rglob("*.rs") if (root / d).is_dir() else []:
            names.update(pat.findall(p.read_text(encoding="utf-8", errors="replace")))
    return names


def env_file_vars(p: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        m = ENV_LINE.match(line)
        if m:
            out.setdefault(m.group(1), n)
    return out


def check_env(repo: Repo, rep: Report) -> set[str]:
    root = repo.root
    used = config_vars(root, rep)
    known = set(used) | {v + "_FILE" for v in used} | code_vars(root)
    examples = sorted((root / "deploy/env").glob("*.env.example"))
    if not examples:
        rep.err("deploy/env/", "no *.env.example files")
    for p in examples:
        rel = repo.rel(p)
        documented = env_file_vars(p)
        for var in sorted(set(used) - set(documented)):
            rep.err(rel, f"{var} (read by {used[var]}) is not documented: add a `{var}=` "
                         f"or `# {var}=` line")
        for var, line in sorted(documented.items()):
            if var not in known:
                rep.err(f"{rel}:{line}", f"{var} is read by no config file nor the code")
    return known


def gatehouse_env(repo: Repo, rep: Report, known: set[str]) -> None:
    """Environment the platform files give Gatehouse's own containers must be read by it."""
    def check(where: str, names) -> None:
        for n in names:
            if isinstance(n, str) and n not in known:
                rep.err(where, f"sets {n}, which no config file nor the code reads")

    # compose: services built from / running the Gatehouse images
    services = as_dict(dig(repo.compose, "services"))
    for name, s in services.items():
        if not is_gatehouse_compose(s):
            continue
        env = dig(s, "environment")
        names = env.keys() if isinstance(env, dict) else [str(x).split("=", 1)[0] for x in as_list(env)]
        check(f"compose.yaml: service {name}", names)
    # k8s: env of gatehouse containers and the ConfigMaps they load
    cms = {dig(d, "metadata", "name"): (f, d) for f, d in repo.of_kind("ConfigMap")}
    for f, d in repo.k8s:
        for c in containers(d):
            if not str(c.get("image", "")).startswith("gatehouse-"):
                continue
            check(f"{f}: {kn(d)} container {c.get('name')}", [dig(e, "name") for e in as_list(c.get("env"))])
            for src in as_list(c.get("envFrom")):
                ref = dig(src, "configMapRef", "name")
                if ref in cms:
                    cf, cd = cms[ref]
                    check(f"{cf}: ConfigMap {ref}", as_dict(cd.get("data")).keys())
    # render.yaml: docker services and the env groups they use
    render = load_other(repo, "render.yaml", quiet=True)
    groups = {dig(g, "name"): g for g in as_list(dig(render, "envVarGroups"))}
    for s in as_list(dig(render, "services")):
        if "Dockerfile" not in str(dig(s, "dockerfilePath", default="")):
            continue
        for e in as_list(dig(s, "envVars")):
            if "fromGroup" in as_dict(e):
                check(f"render.yaml: envVarGroup {e['fromGroup']}",
                      [dig(x, "key") for x in as_list(dig(groups.get(e["fromGroup"]), "envVars"))])
            else:
                check(f"render.yaml: service {dig(s, 'name')}", [dig(e, "key")])
    fly = load_other(repo, "fly.toml", quiet=True)
    check("fly.toml: [env]", as_dict(dig(fly, "env")).keys())


# ---------------------------------------------------------------------------------- k8s rules

def pod_spec(d: dict) -> dict:
    if d.get("kind") == "CronJob":
        return as_dict(dig(d, "spec", "jobTemplate", "spec", "template", "spec"))
    return as_dict(dig(d, "spec", "template", "spec"))


def pod_labels(d: dict) -> dict:
    if d.get("kind") == "CronJob":
        return as_dict(dig(d, "spec", "jobTemplate", "spec", "template", "metadata", "labels"))
    return as_dict(dig(d, "spec", "template", "metadata", "labels"))


def containers(d: dict, init: bool = False) -> list[dict]:
    if d.get("kind") not in WORKLOADS:
        return []
    spec = pod_spec(d)
    out = [c for c in as_list(spec.get("containers")) if isinstance(c, dict)]
    if init:
        out += [c for c in as_list(spec.get("initContainers")) if isinstance(c, dict)]
    return out


def selects(selector, labels: dict) -> bool:
    """A LabelSelector ({matchLabels, matchExpressions}) against a pod's labels."""
    sel = as_dict(selector)
    for k, v in as_dict(sel.get("matchLabels")).items():
        if labels.get(k) != v:
            return False
    for e in as_list(sel.get("matchExpressions")):
        key, op, vals = dig(e, "key"), dig(e, "operator"), as_list(dig(e, "values"))
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and key in labels and labels[key] in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_ports(c: dict) -> tuple[set[int], set[str]]:
    nums, names = set(), set()
    for p in as_list(c.get("ports")):
        if isinstance(dig(p, "containerPort"), int):
            nums.add(p["containerPort"])
        if dig(p, "name"):
            names.add(p["name"])
    return nums, names


def check_k8s(repo: Repo, rep: Report) -> None:
    deployments = repo.of_kind("Deployment")
    workloads = [(f, d) for f, d in repo.k8s if d.get("kind") in WORKLOADS]
    if not deployments:
        rep.err("deploy/k8s/", "no Deployment found")

    for f, d in workloads:
        spec = pod_spec(d)
        pod_sc = as_dict(spec.get("securityContext"))
        cs = containers(d)
        if not cs:
            rep.err(f, f"{kn(d)}: no containers")
        if d.get("kind") != "CronJob" and "selector" in as_dict(d.get("spec")) \
                and not selects(dig(d, "spec", "selector"), pod_labels(d)):
            rep.err(f, f"{kn(d)}: spec.selector does not match its own pod template labels")
        for c in containers(d, init=True):
            where = f"{kn(d)}, container {c.get('name')}"
            sc = as_dict(c.get("securityContext"))
            if not isinstance(c.get("image"), str) or not c["image"].strip():
                rep.err(f, f"{where}: no image")
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            if non_root is not True:
                rep.err(f, f"{where}: runAsNonRoot is not true (pod or container securityContext)")
            if sc.get("readOnlyRootFilesystem") is not True:
                rep.err(f, f"{where}: securityContext.readOnlyRootFilesystem is not true")
            req = as_dict(dig(c, "resources", "requests"))
            for r in ("cpu", "memory"):
                if r not in req:
                    rep.err(f, f"{where}: no resources.requests.{r}")
        if d.get("kind") == "Deployment":
            for c in cs:
                for probe in ("readinessProbe", "livenessProbe"):
                    if not isinstance(c.get(probe), dict) or not c[probe]:
                        rep.err(f, f"{kn(d)}, container {c.get('name')}: no {probe}")

    def matching(selector, pool=deployments):
        return [(f, d) for f, d in pool if selects(selector, pod_labels(d))]

    def by_component(comp):
        return [(f, d) for f, d in deployments if pod_labels(d).get(COMPONENT) == comp]

    api, gw = by_component(API_COMPONENT), by_component(GATEWAY_COMPONENT)
    for comp, found in ((API_COMPONENT, api), (GATEWAY_COMPONENT, gw)):
        if len(found) != 1:
            rep.err("deploy/k8s/", f"expected one Deployment with pod label {COMPONENT}: {comp}, "
                                   f"found {len(found)}")

    # Services: selector -> a Deployment, targetPort -> one of its container ports
    for f, s in repo.of_kind("Service"):
        if dig(s, "spec", "type") == "ExternalName":
            continue
        sel = as_dict(dig(s, "spec", "selector"))
        hits = matching({"matchLabels": sel}) if sel else []
        if not hits:
            rep.err(f, f"{kn(s)}: selector {sel} selects no Deployment of deploy/k8s")
            continue
        for p in as_list(dig(s, "spec", "ports")):
            tp = dig(p, "targetPort", default=dig(p, "port"))
            for _, d in hits:
                nums, names = set(), set()
                for c in containers(d):
                    n, m = container_ports(c)
                    nums |= n
                    names |= m
                if (isinstance(tp, int) and tp not in nums) or (isinstance(tp, str) and tp not in names):
                    rep.err(f, f"{kn(s)}: port {dig(p, 'name', default=dig(p, 'port'))} targets "
                               f"{tp!r}, which {kn(d)} has no container port for")

    for f, p in repo.of_kind("PodDisruptionBudget"):
        if not as_dict(dig(p, "spec", "selector")) or not matching(dig(p, "spec", "selector")):
            rep.err(f, f"{kn(p)}: selector {dig(p, 'spec', 'selector')} selects no Deployment")

    hpas = repo.of_kind("HorizontalPodAutoscaler")
    api_names = {dig(d, "metadata", "name") for _, d in api}
    dep_names = {dig(d, "metadata", "name") for _, d in deployments}
    for f, h in hpas:
        ref = as_dict(dig(h, "spec", "scaleTargetRef"))
        if ref.get("kind") != "Deployment" or ref.get("apiVersion") != "apps/v1" \
                or ref.get("name") not in dep_names:
            rep.err(f, f"{kn(h)}: scaleTargetRef {ref} is no Deployment (apps/v1) of deploy/k8s")
    if api and not any(dig(h, "spec", "scaleTargetRef", "name") in api_names for _, h in hpas):
        rep.err("deploy/k8s/", "no HorizontalPodAutoscaler targets the API Deployment "
                               f"({', '.join(sorted(map(str, api_names)))})")

    # NetworkPolicies: selectors select something; the API admits the gateway only, on its port
    nps = repo.of_kind("NetworkPolicy")
    for f, n in nps:
        if not matching(dig(n, "spec", "podSelector"), workloads):
            rep.err(f, f"{kn(n)}: podSelector selects no workload of deploy/k8s")
        for rule in as_list(dig(n, "spec", "ingress")):
            for peer in as_list(dig(rule, "from")):
                if "podSelector" in as_dict(peer) and "namespaceSelector" not in peer \
                        and not matching(peer["podSelector"], workloads):
                    rep.err(f, f"{kn(n)}: ingress from podSelector {peer['podSelector']} selects "
                               "no workload of deploy/k8s")
    if len(api) == 1 and len(gw) == 1:
        check_api_isolation(api[0][1], gw[0][1], workloads, nps, rep)
    if len(gw) == 1:
        check_gateway_metrics(gw[0][1], nps, rep)

    check_kustomization(repo, rep)


def ingress_policies(nps, labels):
    """The NetworkPolicies (file, document) that select pods with `labels` and restrict ingress
    (an explicit Ingress policy type, or none given, which means Ingress)."""
    return [(f, n) for f, n in nps
            if selects(dig(n, "spec", "podSelector"), labels)
            and ("Ingress" in as_list(dig(n, "spec", "policyTypes"))
                 or "policyTypes" not in as_dict(n.get("spec")))]


def check_api_isolation(api: dict, gw: dict, workloads, nps, rep: Report) -> None:
    api_labels, gw_labels = pod_labels(api), pod_labels(gw)
    others = [d for _, d in workloads if d is not gw]
    nums, names = set(), set()
    for c in containers(api):
        n, m = container_ports(c)
        nums |= n
        names |= m
    applying = ingress_policies(nps, api_labels)
    if not applying:
        rep.err("deploy/k8s/", f"no NetworkPolicy selects the API pods ({kn(api)}): anything in "
                               "the cluster can reach them")
        return
    gateway_admitted = False
    for f, n in applying:
        for i, rule in enumerate(as_list(dig(n, "spec", "ingress"))):
            where = f"{kn(n)}: ingress[{i}]"
            peers = as_list(dig(rule, "from"))
            ports = as_list(dig(rule, "ports"))
            ok = True
            if not peers:
                rep.err(f, f"{where} has no `from`: every source may reach the API")
                ok = False
            for peer in peers:
                peer = as_dict(peer)
                if set(peer) - {"podSelector"}:
                    rep.err(f, f"{where}: peer {peer} is not a podSelector of the gateway "
                               "(namespaceSelector/ipBlock admit more than the gateway)")
                    ok = False
                elif not selects(peer.get("podSelector"), gw_labels):
                    rep.err(f, f"{where}: podSelector {peer.get('podSelector')} does not select "
                               "the gateway pods; only the gateway may reach the API")
                    ok = False
                else:
                    extra = [kn(d) for d in others if selects(peer.get("podSelector"), pod_labels(d))]
                    if extra:
                        rep.err(f, f"{where}: podSelector {peer.get('podSelector')} also admits "
                                   f"{', '.join(extra)}; only the gateway may reach the API")
                        ok = False
            if not ports:
                rep.err(f, f"{where} has no `ports`: every API port is open to it")
                ok = False
            for p in ports:
                port, proto = dig(p, "port"), dig(p, "protocol", default="TCP")
                if proto != "TCP" or "endPort" in as_dict(p) or not (
                        (isinstance(port, int) and port in nums) or (isinstance(port, str) and port in names)):
                    rep.err(f, f"{where}: port {p} is not the API's container port "
                               f"({', '.join(map(str, sorted(nums) + sorted(names)))}, TCP)")
                    ok = False
            gateway_admitted |= ok and bool(peers)
    if not gateway_admitted:
        rep.err("deploy/k8s/", "no NetworkPolicy rule admits the gateway to the API port "
                               "(the gateway could not reach the API)")


def check_gateway_metrics(gw: dict, nps, rep: Report) -> None:
    """The gateway's read-only metrics port (named `metrics`) is for Prometheus and probes
    only: some NetworkPolicy must select the gateway pods, and no rule of those may admit every
    source (no `from`, an ipBlock, an empty namespaceSelector) to that port."""
    labels = pod_labels(gw)
    port = None
    for c in containers(gw):
        for p in as_list(c.get("ports")):
            if dig(p, "name") == "metrics":
                port = (dig(p, "containerPort"), "metrics")
    if port is None:
        return
    applying = ingress_policies(nps, labels)
    if not applying:
        rep.err("deploy/k8s/", f"no NetworkPolicy selects the gateway pods ({kn(gw)}): its "
                               f"metrics port {port[0]} is open to the whole cluster")
        return
    admitted = False
    for f, n in applying:
        for i, rule in enumerate(as_list(dig(n, "spec", "ingress"))):
            ports = as_list(dig(rule, "ports"))
            if ports and not any(dig(p, "port") in port for p in ports):
                continue
            where = f"{kn(n)}: ingress[{i}]"
            peers = as_list(dig(rule, "from"))
            if not peers:
                rep.err(f, f"{where} admits every source to the gateway's metrics port "
                           f"{port[0]} (list the ports it is for, or a `from`)")
                continue
            for peer in map(as_dict, peers):
                if "ipBlock" in peer or ("namespaceSelector" in peer
                                         and not as_dict(peer["namespaceSelector"])):
                    rep.err(f, f"{where}: peer {peer} admits more than the monitoring "
                               "namespace to the gateway's metrics port")
                else:
                    admitted = True
    if not admitted:
        rep.err("deploy/k8s/", "no NetworkPolicy rule admits Prometheus to the gateway's metrics "
                               f"port {port[0]} (a namespaceSelector/podSelector `from`)")


def check_kustomization(repo: Repo, rep: Report) -> None:
    rel = "deploy/k8s/kustomization.yaml"
    k = repo.kustomization
    if k is None:
        if (repo.root / rel).exists():
            return  # parse error already reported
        rep.err(rel, "missing")
        return
    resources = [r for r in as_list(k.get("resources")) if isinstance(r, str)]
    text = (repo.root / rel).read_text(encoding="utf-8")
    commented = set(re.findall(r"(?m)^\s*#\s*-\s*([^\s#]+)", text))
    k8s_dir = repo.root / "deploy/k8s"
    for p in sorted(k8s_dir.glob("*.y*ml")):
        if p.name == "kustomization.yaml":
            continue
        example = fnmatch.fnmatch(p.name, "*.example.y*ml")
        if example:
            if p.name in resources:
                rep.err(rel, f"{p.name} holds placeholders and must not be applied: "
                             "keep it commented out")
            elif p.name not in commented:
                rep.err(rel, f"{p.name} is not listed (commented out, as a placeholder file)")
        elif p.name not in resources:
            rep.err(rel, f"{p.name} is not listed under resources: kubectl apply -k skips it")
    for r in resources:
        if "://" not in r and not (k8s_dir / r).exists():
            rep.err(rel, f"resource {r} does not exist")
    # every image of the manifests is rewritten by `images:` (registry and tag)
    names = {dig(i, "name") for i in as_list(k.get("images"))}
    for f, d in repo.k8s:
        for c in containers(d, init=True):
            img = str(c.get("image", ""))
            if img and image_name(img) not in names:
                rep.err(rel, f"no `images:` entry for {img} ({f}, {kn(d)}): registry and tag "
                             "would not be set")


def image_name(img: str) -> str:
    """registry/repo:tag@digest -> registry/repo"""
    img = img.split("@", 1)[0]
    head, _, last = img.rpartition("/")
    return (head + "/" if head else "") + last.split(":", 1)[0]


# ------------------------------------------------------------------------------ compose rules

def is_gatehouse_compose(s) -> bool:
    s = as_dict(s)
    df = str(dig(s, "build", "dockerfile", default=""))
    return str(s.get("image", "")).startswith("gatehouse-") or df.startswith("Dockerfile.")


def check_compose(repo: Repo, rep: Report) -> None:
    f = "compose.yaml"
    c = repo.compose
    if c is None:
        if not (repo.root / f).exists():
            rep.err(f, "missing")
        return
    services = as_dict(c.get("services"))
    declared = set(as_dict(c.get("secrets")))
    for name, s in services.items():
        s = as_dict(s)
        dep = s.get("depends_on")
        deps = dep.items() if isinstance(dep, dict) else [(x, {}) for x in as_list(dep)]
        for target, cond in deps:
            if target not in services:
                rep.err(f, f"service {name}: depends_on {target}, which is no service")
                continue
            if dig(cond, "condition") == "service_healthy":
                hc = as_dict(dig(services[target], "healthcheck"))
                if not hc or hc.get("disable") is True:
                    rep.err(f, f"service {name}: depends_on {target} with condition "
                               f"service_healthy, but {target} has no healthcheck")
        image = str(s.get("image", ""))
        df = str(dig(s, "build", "dockerfile", default=""))
        repo_name = image_name(image).rsplit("/", 1)[-1]
        is_api = repo_name == "gatehouse-api" or df.endswith("Dockerfile.api")
        is_pg = repo_name in ("postgres", "postgresql") or repo_name.startswith("postgres")
        if is_api or is_pg:
            what = "the API" if is_api else "PostgreSQL"
            if as_list(s.get("ports")):
                rep.err(f, f"service {name} ({what}) publishes host ports {s['ports']}: it must "
                           "stay on the private network")
            if s.get("network_mode") == "host":
                rep.err(f, f"service {name} ({what}) uses network_mode: host")
        for sec in as_list(s.get("secrets")):
            src = sec if isinstance(sec, str) else dig(sec, "source")
            if src not in declared:
                rep.err(f, f"service {name}: secret {src} is not declared under top-level `secrets:`")


# --------------------------------------------------------------------------------- PaaS rules

def load_other(repo: Repo, name: str, quiet: bool = False):
    p = repo.root / name
    try:
        text = p.read_text(encoding="utf-8")
        if name.endswith((".yaml", ".yml")):
            return yaml.safe_load(text)
        if name.endswith(".json"):
            return json.loads(text)
        return tomllib.loads(text)
    except FileNotFoundError:
        if not quiet:
            repo.rep.err(name, "missing")
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError, OSError) as e:
        if not quiet:
            repo.rep.err(name, f"does not parse: {one_line(e)}")
    return None


def check_paas(repo: Repo, rep: Report) -> None:
    def dockerfile(where, path):
        if path and not (repo.root / str(path)).is_file():
            rep.err(where, f"names Dockerfile {path}, which does not exist")

    render = load_other(repo, "render.yaml")
    if render is not None:
        if not isinstance(render, dict) or not as_list(render.get("services")):
            rep.err("render.yaml", "no `services:` list")
        for s in as_list(dig(render, "services")):
            dockerfile(f"render.yaml: service {dig(s, 'name')}", dig(s, "dockerfilePath"))
    railway = load_other(repo, "railway.json")
    if railway is not None:
        dockerfile("railway.json", dig(railway, "build", "dockerfilePath"))
    fly = load_other(repo, "fly.toml")
    if fly is not None:
        dockerfile("fly.toml", dig(fly, "build", "dockerfile"))
        port = dig(fly, "env", "PORT")
        sections = ([("[http_service]", fly["http_service"])] if isinstance(fly.get("http_service"), dict) else []) \
            + [(f"[[services]] #{i}", s) for i, s in enumerate(as_list(fly.get("services")))]
        if not sections:
            rep.err("fly.toml", "no [http_service] nor [[services]] with an internal_port")
        if port is None:
            rep.err("fly.toml", "[env] sets no PORT: the gateway would listen on its default (80)")
        for where, s in sections:
            ip = dig(s, "internal_port")
            if port is not None and str(ip) != str(port).strip():
                rep.err("fly.toml", f"{where} internal_port = {ip}, but [env] PORT = {port!r}: "
                                    "Fly's proxy would send traffic where nothing listens")


# ------------------------------------------------------------------------------ secrets rule

PEM_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
URL_CRED = re.compile(r"\b([a-z][a-z0-9+.-]*)://([^\s:/@'\"`<>]*):([^\s@'\"`]*)@([^\s/:?#'\"`]*)")
PLACEHOLDER = re.compile(r"placeholder|fake|example|change[-_]?me|dummy|redacted|your[-_]?|"
                         r"^(?:password|passwd|pass|pw|secret|xxx+|\*+|\.\.\.|…)$|[<>{}$%…*]|\.\.\.",
                         re.IGNORECASE)
LOOPBACK = re.compile(r"^(?:localhost|127(?:\.\d+){0,3}|\[?::1\]?)$", re.IGNORECASE)


def check_secrets(repo: Repo, rep: Report) -> None:
    files = [repo.root / n for n in PAAS_FILES if (repo.root / n).is_file()]
    deploy = repo.root / "deploy"
    if deploy.is_dir():
        files += sorted(p for p in deploy.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary: not a text secret
        rel = repo.rel(p)
        for n, line in enumerate(text.splitlines(), 1):
            if PEM_KEY.search(line):
                rep.err(f"{rel}:{n}", "a PEM private key block: keys belong in a secret store")
            for m in URL_CRED.finditer(line):
                scheme, user, password, host = m.groups()
                if not password or PLACEHOLDER.search(password) or LOOPBACK.match(host):
                    continue
                rep.err(f"{rel}:{n}", f"{scheme}:// URL with a literal password for "
                                      f"{user}@{host}: use a placeholder (e.g. PLACEHOLDER_PASSWORD) "
                                      "or a secret")


# ------------------------------------------------------------------------ schema steps (venv)

def k8s_schemas(repo: Repo, rep: Report, version: str) -> int:
    try:
        from kubernetes_validate import utils as kv
    except ImportError:
        rep.err("deploy/k8s/", "kubernetes-validate is not installed (run scripts/check-deploy.sh)")
        return 0
    count = 0
    for f, d in repo.k8s:
        count += 1
        try:
            kv.validate(d, version, strict=True)
        except kv.SchemaNotFoundError:
            rep.err(f, f"{kn(d)}: Kubernetes {version} has no {d.get('apiVersion')} {d.get('kind')} "
                       "(misspelt, a CRD, or an API removed by then)")
        except kv.ValidationError as e:
            path = ".".join(str(x) for x in e.absolute_path) or "(top)"
            rep.err(f, f"{kn(d)}: {path}: {e.message} (Kubernetes {version} schema, strict)")
    return count


def compose_schema(repo: Repo, rep: Report) -> str:
    import importlib.util

    import jsonschema
    from ruamel.yaml import YAML
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is None or spec.origin is None:
        rep.err("compose.yaml", "check-jsonschema (which ships the compose-spec schema) is not "
                                "installed (run scripts/check-deploy.sh)")
        return ""
    schema_file = Path(spec.origin).parent / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    try:  # YAML 1.2 like Compose itself (`no`, `on` stay strings); merge keys resolved
        data = YAML(typ="safe", pure=True).load((repo.root / "compose.yaml").read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - reported, not raised
        rep.err("compose.yaml", f"does not parse as YAML: {one_line(e)}")
        return ""
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    def path(e):
        return "$" + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in e.absolute_path)

    for e in sorted(validator.iter_errors(data), key=lambda e: [str(x) for x in e.absolute_path]):
        msg = f"{path(e)}: {e.message}"
        if e.context:  # anyOf/oneOf: name the failure deepest in the document
            deep, stack = e, list(e.context)
            while stack:
                c = stack.pop(0)
                if len(c.absolute_path) > len(deep.absolute_path):
                    deep = c
                stack.extend(c.context or [])
            if deep is not e:
                msg += f" (deepest: {path(deep)}: {deep.message})"
        rep.err("compose.yaml", f"{msg} (compose-spec schema)")
    return schema_file.name


# ----------------------------------------------------------------------------------- driver

def run_rules(root: Path) -> Report:
    rep = Report()
    repo = Repo(root, rep)
    known = check_env(repo, rep)
    gatehouse_env(repo, rep, known)
    check_k8s(repo, rep)
    check_compose(repo, rep)
    check_paas(repo, rep)
    check_secrets(repo, rep)
    return rep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--k8s-version", help="also validate deploy/k8s against this Kubernetes version")
    ap.add_argument("--compose-schema", action="store_true",
                    help="also validate compose.yaml against the compose-spec JSON schema")
    ap.add_argument("--self-test", action="store_true",
                    help="break temporary copies and check that each rule reports it")
    args = ap.parse_args()
    root = args.root.resolve()
    if args.self_test:
        return self_test(root)

    rep = Report()
    lines = []
    repo = Repo(root, rep)
    if args.k8s_version:
        n = k8s_schemas(repo, rep, args.k8s_version)
        if not rep.errors:
            lines.append(f"k8s schemas: {n} resources valid against Kubernetes {args.k8s_version} (strict)")
    if args.compose_schema:
        before = len(rep.errors)
        if compose_schema(repo, rep) and len(rep.errors) == before:
            lines.append("compose.yaml: valid against the compose-spec schema")
    rules = run_rules(root)
    # parse errors are found by both passes: report each once
    errors = list(dict.fromkeys(rep.errors + rules.errors))
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        return 1
    lines.append("project rules: ok (env docs, k8s, compose, render/railway/fly, no secrets)")
    for line in lines:
        print(f"deploy: {line}")
    return 0


# -------------------------------------------------------------------------------- self-test

def _yaml_edit(path: str, fn, doc: int = 0):
    def apply(root: Path):
        p = root / path
        docs = list(yaml.safe_load_all(p.read_text(encoding="utf-8")))
        docs = [d for d in docs if d is not None]
        fn(docs[doc])
        p.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return apply


def _text_edit(path: str, old: str | None, new: str):
    """Replace the first `old` (None: append `new`)."""
    def apply(root: Path):
        p = root / path
        text = p.read_text(encoding="utf-8")
        if old is None:
            text += new
        else:
            if old not in text:
                raise AssertionError(f"self-test anchor {old!r} is not in {path}")
            text = text.replace(old, new, 1)
        p.write_text(text, encoding="utf-8")
    return apply


def _c0(d):
    return d["spec"]["template"]["spec"]["containers"][0]


def _deployment(name: str):
    return f"deploy/k8s/{name}-deployment.yaml"


def _np_allow(fn):
    return _yaml_edit("deploy/k8s/networkpolicy.yaml", fn, doc=1)


def _compose(fn):
    return _yaml_edit("compose.yaml", fn)


MUTATIONS = [
    # (what, edit, text expected in one of the errors)
    ("config var undocumented", _text_edit("config/gateway.toml", None,
                                           '\n[selftest]\nx = "${SELFTEST_NEW_VAR:-1}"\n'),
     "SELFTEST_NEW_VAR (read by config/gateway.toml) is not documented"),
    ("core-api var undocumented", _text_edit("config/core-api.production.toml", None,
                                             '\n[selftest]\nx = "${SELFTEST_API_VAR}"\n'),
     "SELFTEST_API_VAR"),
    ("env example var unused", _text_edit("deploy/env/staging.env.example", None,
                                          "\n# SELFTEST_UNUSED=1\n"),
     "SELFTEST_UNUSED is read by no config file nor the code"),
    ("ConfigMap sets a typo", _yaml_edit("deploy/k8s/configmap.yaml",
                                         lambda d: d["data"].update(GATEWAY_METRIC_LISTEN="x"), doc=1),
     "sets GATEWAY_METRIC_LISTEN"),
    ("fly env typo", _text_edit("fly.toml", "\n[env]\n", "\n[env]\n  JWT_ISSUR = \"x\"\n"),
     "sets JWT_ISSUR"),
    ("no readinessProbe", _yaml_edit(_deployment("api"), lambda d: _c0(d).pop("readinessProbe")),
     "no readinessProbe"),
    ("no livenessProbe", _yaml_edit(_deployment("gateway"), lambda d: _c0(d).pop("livenessProbe")),
     "no livenessProbe"),
    ("no requests", _yaml_edit(_deployment("api"), lambda d: _c0(d)["resources"].pop("requests")),
     "no resources.requests.cpu"),
    ("root allowed", _yaml_edit(_deployment("gateway"),
                                lambda d: d["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")),
     "runAsNonRoot is not true"),
    ("writable root fs", _yaml_edit(_deployment("api"),
                                    lambda d: _c0(d)["securityContext"].update(readOnlyRootFilesystem=False)),
     "readOnlyRootFilesystem is not true"),
    ("no image", _yaml_edit(_deployment("gateway"), lambda d: _c0(d).pop("image")), "no image"),
    ("deployment selector", _yaml_edit(_deployment("api"),
                                       lambda d: d["spec"]["selector"]["matchLabels"].update(x="y")),
     "spec.selector does not match its own pod template"),
    ("service selector", _yaml_edit("deploy/k8s/api-service.yaml",
                                    lambda d: d["spec"]["selector"].update({"app.kubernetes.io/name": "gatehouse-apx"})),
     "selects no Deployment"),
    ("service targetPort", _yaml_edit("deploy/k8s/gateway-service.yaml",
                                      lambda d: d["spec"]["ports"][0].update(targetPort="htps")),
     "targets 'htps'"),
    ("PDB selector", _yaml_edit("deploy/k8s/gateway-pdb.yaml",
                                lambda d: d["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "gw"})),
     "PodDisruptionBudget gatehouse-gateway: selector"),
    ("HPA target missing", _yaml_edit("deploy/k8s/api-hpa.yaml",
                                      lambda d: d["spec"]["scaleTargetRef"].update(name="gatehouse-apii")),
     "scaleTargetRef"),
    ("HPA targets the gateway", _yaml_edit("deploy/k8s/api-hpa.yaml",
                                           lambda d: d["spec"]["scaleTargetRef"].update(name="gatehouse-gateway")),
     "no HorizontalPodAutoscaler targets the API"),
    ("NetworkPolicy selector", _yaml_edit("deploy/k8s/networkpolicy.yaml",
                                          lambda d: d["spec"]["podSelector"]["matchLabels"].update(x="y")),
     "podSelector selects no workload"),
    ("NP admits everyone", _np_allow(lambda d: d["spec"]["ingress"][0].pop("from")),
     "has no `from`"),
    ("NP admits a namespace", _np_allow(lambda d: d["spec"]["ingress"][0]["from"].append(
        {"namespaceSelector": {}})), "namespaceSelector/ipBlock"),
    ("NP admits the API itself", _np_allow(lambda d: d["spec"]["ingress"][0]["from"][0]["podSelector"].update(
        matchLabels={"app.kubernetes.io/part-of": "gatehouse"})), "also admits Deployment gatehouse-api"),
    ("NP admits all ports", _np_allow(lambda d: d["spec"]["ingress"][0].pop("ports")), "has no `ports`"),
    ("NP wrong port", _np_allow(lambda d: d["spec"]["ingress"][0]["ports"][0].update(port=9000)),
     "is not the API's container port"),
    ("no NP for the API", lambda root: (root / "deploy/k8s/networkpolicy.yaml").unlink(),
     "no NetworkPolicy selects the API pods"),
    ("gateway metrics from everywhere", _yaml_edit("deploy/k8s/gateway-networkpolicy.yaml",
                                                   lambda d: d["spec"]["ingress"][1].pop("from")),
     "admits every source to the gateway's metrics port"),
    ("gateway public rule on every port", _yaml_edit("deploy/k8s/gateway-networkpolicy.yaml",
                                                     lambda d: d["spec"]["ingress"][0].pop("ports")),
     "admits every source to the gateway's metrics port"),
    ("gateway metrics from all namespaces", _yaml_edit(
        "deploy/k8s/gateway-networkpolicy.yaml",
        lambda d: d["spec"]["ingress"][1]["from"][0].update(namespaceSelector={})),
     "admits more than the monitoring namespace"),
    ("no NP for the gateway", lambda root: (root / "deploy/k8s/gateway-networkpolicy.yaml").unlink(),
     "no NetworkPolicy selects the gateway pods"),
    ("kustomization misses a file", _text_edit("deploy/k8s/kustomization.yaml", "  - api-pdb.yaml\n", ""),
     "api-pdb.yaml is not listed"),
    ("kustomization applies the secrets example", _text_edit(
        "deploy/k8s/kustomization.yaml", "  # - secrets.example.yaml", "  - secrets.example.yaml"),
     "must not be applied"),
    ("kustomization lists a missing file", _text_edit(
        "deploy/k8s/kustomization.yaml", "resources:\n", "resources:\n  - gone.yaml\n"),
     "resource gone.yaml does not exist"),
    ("kustomization misses an image", _text_edit(
        "deploy/k8s/kustomization.yaml", "- name: gatehouse-gateway", "- name: gatehouse-gw"),
     "no `images:` entry for gatehouse-gateway"),
    ("compose healthy without healthcheck", _compose(lambda d: d["services"]["core-api"].pop("healthcheck")),
     "core-api has no healthcheck"),
    ("compose depends on nothing", _compose(lambda d: d["services"]["gateway"]["depends_on"].update(
        {"ghost": {"condition": "service_started"}})), "depends_on ghost, which is no service"),
    ("compose API published", _compose(lambda d: d["services"]["core-api"].update(ports=["8000:8000"])),
     "service core-api (the API) publishes host ports"),
    ("compose PostgreSQL published", _compose(lambda d: d["services"]["postgres"].update(ports=["5432:5432"])),
     "service postgres (PostgreSQL) publishes host ports"),
    ("compose undeclared secret", _compose(lambda d: d["services"]["gateway"].update(secrets=["tls_key"])),
     "secret tls_key is not declared"),
    ("render.yaml broken", _text_edit("render.yaml", None, "\n  - : [\n"), "render.yaml: does not parse"),
    ("railway.json broken", _text_edit("railway.json", None, ","), "railway.json: does not parse"),
    ("fly.toml broken", _text_edit("fly.toml", None, "\n[env\n"), "fly.toml: does not parse"),
    ("fly port mismatch", _text_edit("fly.toml", "internal_port = 8080", "internal_port = 8000"),
     "internal_port = 8000, but [env] PORT = '8080'"),
    ("railway Dockerfile typo", _text_edit("railway.json", '"Dockerfile.gateway"', '"Dockerfile.gw"'),
     "names Dockerfile Dockerfile.gw"),
    ("PEM key in deploy/", _text_edit("deploy/env/production.env.example", None,
                                      "\n# -----BEGIN PRIVATE KEY-----\n"), "a PEM private key block"),
    ("password in a URL", _text_edit("compose.yaml", None,
                                     "\n# postgres://gatehouse:s3cr3t-Pa55@db.internal:5432/gatehouse\n"),
     "literal password for gatehouse@db.internal"),
    ("password in a k8s Secret", _text_edit("deploy/k8s/secrets.example.yaml", "PLACEHOLDER_PASSWORD",
                                            "Tr0ub4dor3"), "deploy/k8s/secrets.example.yaml:"),
]


def self_test(root: Path) -> int:
    copy_items = ["config", "deploy", *PAAS_FILES, "Dockerfile.api", "Dockerfile.gateway", *CODE_DIRS]
    failures = []
    with tempfile.TemporaryDirectory(prefix="gatehouse-check-deploy.") as tmp:
        base = Path(tmp) / "base"
        for item in copy_items:
            src, dst = root / item, base / item
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        baseline = run_rules(base).errors
        if baseline:
            print("self-test: the unmodified files already fail; fix these first:", file=sys.stderr)
            for e in baseline:
                print(f"  {e}", file=sys.stderr)
            return 1
        for what, edit, expect in MUTATIONS:
            work = Path(tmp) / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(base, work)
            try:
                edit(work)
            except Exception as e:  # noqa: BLE001
                failures.append(f"{what}: could not apply the breakage: {one_line(e)}")
                continue
            errors = [e.replace(str(work) + "/", "") for e in run_rules(work).errors]
            if not any(expect in e for e in errors):
                failures.append(f"{what}: expected an error containing {expect!r}, got {errors}")
    if failures:
        for f in failures:
            print(f"self-test FAILED: {f}", file=sys.stderr)
        return 1
    print(f"deploy: self-test: all {len(MUTATIONS)} breakages reported by the project rules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
