#!/usr/bin/env python3
"""Offline checks for helm/interest-now (run through scripts/check-helm).

1. `helm lint --strict` with Helm's own engine (helm-python-sdk binds the Helm
   v4 Go SDK; no helm binary, no cluster), for the default values and for
   helm/values-production.yaml.
2. Render the chart for several value sets and validate every manifest:
   built-in kinds with kubernetes-validate (strict schemas of KUBE_VERSION),
   CRD kinds (KEDA ScaledObject, ServiceMonitor, PrometheusRule) with a structural
   check here; the alerts' and the dashboard's PromQL by promtool.
3. Assert the chart's invariants on the rendered objects (rolling updates with
   no unavailable pods, no worker replicas under KEDA, hardened containers,
   secrets by reference only, hook ordering, probes, ports, CronJobs).
4. Run the CronJobs' date wrappers under sh with a pinned clock.
5. Feed bad values and require the schema / template guards to reject them.

Prints one summary line; exits 1 with every failure listed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

try:
    import helm_python as helm
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError
except ImportError as exc:  # pragma: no cover - the wrapper installs these
    sys.exit(f"check-helm: missing Python package ({exc}); run scripts/check-helm")

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "interest-now"
PRODUCTION_VALUES = ROOT / "helm" / "values-production.yaml"
KUBE_VERSION = "1.30.0"  # bundled by kubernetes-validate; the chart needs >= 1.27
RELEASE = "interest-now"
NAMESPACE = "interest-now"
KST = timezone(timedelta(hours=9))
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
# What the dashboard must show (issue 14): each metric appears in some panel's query.
DASHBOARD_METRICS = {
    "interest_claims_total", "interest_claim_duration_seconds_bucket", "kafka_consumer_lag",
    "outbox_pending", "balance_snapshots_total", "worker_batch_size_bucket",
    "kube_pod_container_status_restarts_total",
}
# The README's "Alerts" section, each with an alert.
ALERT_METRICS = {"kafka_consumer_lag", "outbox_pending", "interest_claims_total", "balance_snapshots_total"}
SECRET_ENV = {"DATABASE_URL", "API_TOKENS"}

errors: list[str] = []


def error(msg: str) -> None:
    errors.append(msg)


def check(cond: bool, msg: str) -> bool:
    if not cond:
        error(msg)
    return cond


def dig(obj: Any, *path: Any, default: Any = None) -> Any:
    for key in path:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return default
    return obj


# --------------------------------------------------------------------------- lint


def lint(label: str, values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    for err in report.get("errors") or []:
        error(f"lint[{label}]: {err}")
    for msg in report.get("messages") or []:
        # severity 0=unknown 1=info 2=warning 3=error; strict treats warnings as errors.
        if msg.get("severity", 0) >= 2:
            error(f"lint[{label}]: {msg.get('path')}: {msg.get('error')}")


# ------------------------------------------------------------------------- render


def render(chart: "helm.Chart", values: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[tuple[str, dict[str, Any]]] = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                error(f"{template}: rendered a non-object document")
                continue
            docs.append((template, doc))
    return docs


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{dig(doc, 'metadata', 'name')}"


# --------------------------------------------------------------------- validation


def validate_builtin(where: str, doc: dict[str, Any]) -> bool:
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        return True
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path) or "<root>"
        error(f"{where}: k8s {KUBE_VERSION} schema: at {path}: {exc.message}")
    except SchemaNotFoundError as exc:
        error(f"{where}: {exc.message}")
    return False


def validate_scaled_object(where: str, doc: dict[str, Any], merged: dict[str, Any]) -> bool:
    ok = True
    spec = doc.get("spec")
    if not check(isinstance(spec, dict), f"{where}: spec missing"):
        return False
    target = spec.get("scaleTargetRef") or {}
    ok &= check(target.get("kind", "Deployment") == "Deployment" and bool(target.get("name")),
                f"{where}: spec.scaleTargetRef must name the worker Deployment")
    lo, hi = spec.get("minReplicaCount"), spec.get("maxReplicaCount")
    partitions = merged["kafka"]["partitions"]
    ok &= check(isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi,
                f"{where}: need integers 1 <= minReplicaCount ({lo}) <= maxReplicaCount ({hi})")
    ok &= check(isinstance(hi, int) and hi <= partitions,
                f"{where}: maxReplicaCount {hi} exceeds kafka.partitions {partitions}")
    triggers = spec.get("triggers")
    if not check(isinstance(triggers, list) and triggers, f"{where}: spec.triggers must be a non-empty list"):
        return False
    kafka_topics = set()
    for i, trig in enumerate(triggers):
        meta = trig.get("metadata") if isinstance(trig, dict) else None
        if not check(isinstance(meta, dict), f"{where}: triggers[{i}].metadata missing"):
            ok = False
            continue
        ok &= check(all(isinstance(v, str) for v in meta.values()),
                    f"{where}: triggers[{i}].metadata values must all be strings")
        kind = trig.get("type")
        if kind == "kafka":
            for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                ok &= check(bool(meta.get(key)), f"{where}: kafka trigger {i} lacks metadata.{key}")
            # One consumer group per input topic: <KAFKA_GROUP_ID>.claims / .snapshots.
            stream = "claims" if str(meta.get("topic", "")).endswith("interest-claims") else "snapshots"
            ok &= check(meta.get("consumerGroup") == f'{merged["kafka"]["groupId"]}.{stream}',
                        f"{where}: kafka trigger {i} consumerGroup is not KAFKA_GROUP_ID.{stream}")
            ok &= check(str(meta.get("lagThreshold", "")).isdigit(), f"{where}: lagThreshold must be an integer string")
            kafka_topics.add(meta.get("topic"))
        elif kind == "cron":
            for key in ("timezone", "start", "end", "desiredReplicas"):
                ok &= check(bool(meta.get(key)), f"{where}: cron trigger {i} lacks metadata.{key}")
            want = meta.get("desiredReplicas", "")
            ok &= check(want.isdigit() and isinstance(hi, int) and int(want) <= hi,
                        f"{where}: cron desiredReplicas {want!r} must be an integer <= maxReplicaCount")
        else:
            ok &= check(False, f"{where}: unexpected trigger type {kind!r}")
    prefix = merged["kafka"]["topicPrefix"]
    ok &= check(kafka_topics == {prefix + "interest-claims", prefix + "balance-snapshots"},
                f"{where}: kafka triggers must cover {prefix}interest-claims and {prefix}balance-snapshots, got {sorted(kafka_topics)}")
    return ok


def validate_service_monitor(where: str, doc: dict[str, Any]) -> bool:
    ok = True
    spec = doc.get("spec") or {}
    ok &= check(bool(dig(spec, "selector", "matchLabels")), f"{where}: spec.selector.matchLabels required")
    endpoints = spec.get("endpoints")
    if not check(isinstance(endpoints, list) and endpoints, f"{where}: spec.endpoints required"):
        return False
    for i, ep in enumerate(endpoints):
        ok &= check(ep.get("port") == "admin", f"{where}: endpoints[{i}] must scrape the admin port")
        ok &= check(ep.get("path", "/metrics") == "/metrics", f"{where}: endpoints[{i}].path must be /metrics")
        for key in ("interval", "scrapeTimeout"):
            if key in ep:
                ok &= check(re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", str(ep[key])) is not None,
                            f"{where}: endpoints[{i}].{key} is not a duration")
    return ok


def validate_prometheus_rule(where: str, doc: dict[str, Any]) -> bool:
    ok = True
    groups = dig(doc, "spec", "groups")
    if not check(isinstance(groups, list) and groups, f"{where}: spec.groups required"):
        return False
    seen: set[str] = set()
    for g in groups:
        ok &= check(bool(g.get("name")), f"{where}: every group needs a name")
        for rule in g.get("rules") or []:
            name = rule.get("alert", "?")
            expr = str(rule.get("expr", ""))
            ok &= check(bool(rule.get("alert")) and bool(expr), f"{where}: {name}: alert and expr required")
            ok &= check('namespace="' in expr, f"{where}: {name}: expr must select the release namespace")
            ok &= check(bool(dig(rule, "labels", "severity")), f"{where}: {name}: labels.severity required")
            for key in ("summary", "description", "runbook"):
                ok &= check(bool(dig(rule, "annotations", key)), f"{where}: {name}: annotations.{key} required")
            if "for" in rule:
                ok &= check(re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", str(rule["for"])) is not None,
                            f"{where}: {name}: for is not a duration")
            seen |= {m for m in ALERT_METRICS if m in expr}
    ok &= check(seen == ALERT_METRICS, f"{where}: alerts missing for {sorted(ALERT_METRICS - seen)}")
    before = len(errors)
    promtool_check(where, groups)
    return ok and len(errors) == before


def promtool_check(where: str, rules: list[dict[str, Any]]) -> None:
    """PromQL syntax and rule structure by promtool (PROMTOOL, set by scripts/check-helm)."""
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not check(bool(promtool), f"{where}: promtool not found (scripts/check-helm fetches it)"):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": rules}, f)
        path = f.name
    try:
        out = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True, timeout=60)
        check(out.returncode == 0, f"{where}: promtool check rules: {out.stdout.strip()} {out.stderr.strip()}")
    finally:
        os.unlink(path)


def dashboard_as_rules(exprs: list[str]) -> list[dict[str, Any]]:
    """Each panel query as a recording rule, so promtool parses it (Grafana's
    $variables replaced by a value of the right shape)."""
    def concrete(e: str) -> str:
        return e.replace("$namespace", "interest-now").replace("$release", "interest-now")
    return [{"name": "dashboard", "rules": [{"record": f"dashboard:panel_{i}", "expr": concrete(e)}
                                             for i, e in enumerate(exprs)]}]


def check_dashboard(where: str, doc: dict[str, Any], merged: dict[str, Any]) -> None:
    g = merged["grafanaDashboard"]
    check(dig(doc, "metadata", "labels", g["label"]) == g["labelValue"],
          f"{where}: the Grafana sidecar label {g['label']}={g['labelValue']} is missing")
    try:
        dash = json.loads((doc.get("data") or {}).get("interest-now.json", ""))
    except ValueError as exc:
        error(f"{where}: interest-now.json is not JSON: {exc}")
        return
    exprs = [t.get("expr", "") for p in dash.get("panels", []) for t in p.get("targets", [])]
    missing = {m for m in DASHBOARD_METRICS if not any(m in e for e in exprs)}
    check(not missing, f"{where}: dashboard panels missing {sorted(missing)}")
    check("__FULLNAME__" not in json.dumps(dash), f"{where}: __FULLNAME__ left unreplaced")
    promtool_check(where, dashboard_as_rules(exprs))


def validate_crd(where: str, doc: dict[str, Any], merged: dict[str, Any]) -> bool:
    ok = check(bool(dig(doc, "metadata", "name")), f"{where}: metadata.name required")
    if doc["kind"] == "ScaledObject":
        return validate_scaled_object(where, doc, merged) and ok
    if doc["kind"] == "PrometheusRule":
        return validate_prometheus_rule(where, doc) and ok
    return validate_service_monitor(where, doc) and ok


# --------------------------------------------------------------------- invariants


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc.get("kind")
    if kind in ("Deployment", "Job"):
        return dig(doc, "spec", "template", "spec")
    if kind == "CronJob":
        return dig(doc, "spec", "jobTemplate", "spec", "template", "spec")
    return None


def component(doc: dict[str, Any]) -> str | None:
    return dig(doc, "metadata", "labels", "app.kubernetes.io/component")


def check_pod(where: str, spec: dict[str, Any]) -> None:
    pod_sc = spec.get("securityContext") or {}
    check(pod_sc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot must be true")
    check(dig(pod_sc, "seccompProfile", "type") == "RuntimeDefault", f"{where}: pod seccompProfile must be RuntimeDefault")
    check(spec.get("automountServiceAccountToken") is False, f"{where}: service account token must not be mounted")
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    check(bool(containers), f"{where}: no containers")
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        check(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem must be true")
        check(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{cw}: runAsNonRoot must be true")
        check((sc.get("runAsUser") or pod_sc.get("runAsUser") or 0) > 0, f"{cw}: must run as a non-zero UID")
        check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation must be false")
        check("ALL" in (dig(sc, "capabilities", "drop") or []), f"{cw}: capabilities must drop ALL")
        check(not dig(sc, "capabilities", "add"), f"{cw}: must not add capabilities")
        check(bool(dig(c, "resources", "requests")) and bool(dig(c, "resources", "limits")),
              f"{cw}: resources.requests and resources.limits required")
        tmp = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/tmp"]
        check(len(tmp) == 1 and "emptyDir" in (volumes.get(tmp[0].get("name")) or {}) if tmp else False,
              f"{cw}: /tmp must be an emptyDir mount")
        for env in c.get("env") or []:
            name = env.get("name")
            if name in SECRET_ENV:
                check("value" not in env and dig(env, "valueFrom", "secretKeyRef", "name") is not None,
                      f"{cw}: {name} must come from a secretKeyRef, never a literal value")
            value = env.get("value")
            if isinstance(value, str):
                check(re.search(r"://[^/\s:@]+:[^/\s@]+@", value) is None,
                      f"{cw}: env {name} carries credentials in a URL")


def check_database_roles(objs: list[dict[str, Any]], merged: dict[str, Any], where: Callable[[dict[str, Any]], str]) -> None:
    """Only the migration Job and `maintain` (DDL on partitions, DELETE of
    expired keys) connect as the schema owner; every other pod and job uses
    the application login (least privilege)."""
    app_key, owner_key = merged["secrets"]["databaseUrlKey"], merged["secrets"]["migrationsDatabaseUrlKey"]
    check(app_key != owner_key, "secrets.databaseUrlKey and secrets.migrationsDatabaseUrlKey must differ")
    for d in objs:
        spec = pod_spec(d)
        if spec is None:
            continue
        want = owner_key if component(d) in ("migrate", "maintain") else app_key
        for c in spec.get("containers") or []:
            for env in c.get("env") or []:
                if env.get("name") == "DATABASE_URL":
                    got = dig(env, "valueFrom", "secretKeyRef", "key")
                    check(got == want, f"{where(d)}: DATABASE_URL from key {got}, expected {want}")


def check_invariants(label: str, docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> None:
    objs = [d for _, d in docs]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in objs:
        by_kind.setdefault(d["kind"], []).append(d)
    where = lambda d: f"[{label}] {name_of(d)}"  # noqa: E731
    check_database_roles(objs, merged, where)

    check("Secret" not in by_kind, f"[{label}] the chart must not render Secret objects")
    names = [(d["kind"], dig(d, "metadata", "name")) for d in objs]
    check(len(names) == len(set(names)), f"[{label}] duplicate object names: {sorted(names)}")

    deployments = {component(d): d for d in by_kind.get("Deployment", [])}
    check(set(deployments) == {"api", "worker"}, f"[{label}] expected api and worker Deployments, got {sorted(deployments)}")
    admin_port = merged["config"]["adminPort"]
    for comp, d in deployments.items():
        w = where(d)
        strategy = dig(d, "spec", "strategy") or {}
        check(strategy.get("type") == "RollingUpdate", f"{w}: strategy must be RollingUpdate")
        mu = dig(strategy, "rollingUpdate", "maxUnavailable")
        check(mu == 0 and not isinstance(mu, bool), f"{w}: maxUnavailable must be 0, got {mu!r}")
        check(dig(strategy, "rollingUpdate", "maxSurge") not in (None, 0, "0", "0%"), f"{w}: maxSurge must be > 0")
        spec = pod_spec(d) or {}
        c = dig(spec, "containers", 0) or {}
        check(c.get("args", [])[:3] == ["serve", "--role", comp], f"{w}: must run `serve --role {comp}`")
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        check(ports.get("admin") == admin_port, f"{w}: named port admin must be {admin_port}")
        check(dig(c, "livenessProbe", "httpGet", "path") == "/healthz" and dig(c, "livenessProbe", "httpGet", "port") == "admin",
              f"{w}: liveness must GET /healthz on the admin port")
        check(dig(c, "readinessProbe", "httpGet", "path") == "/readyz" and dig(c, "readinessProbe", "httpGet", "port") == "admin",
              f"{w}: readiness must GET /readyz on the admin port")
        envs = {e.get("name") for e in c.get("env") or []}
        grace = spec.get("terminationGracePeriodSeconds") or 0
        if comp == "api":
            check("http" in ports, f"{w}: API needs a named http port")
            check("API_TOKENS" in envs, f"{w}: API needs API_TOKENS")
            pre = dig(c, "lifecycle", "preStop") or {}
            sleep = dig(pre, "sleep", "seconds")
            if sleep is None:
                cmd = dig(pre, "exec", "command") or []
                sleep = int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" and str(cmd[1]).isdigit() else None
            check(sleep is not None and sleep > 0, f"{w}: API needs a preStop sleep before SIGTERM")
            check(grace >= (sleep or 0) + 15, f"{w}: terminationGracePeriodSeconds {grace} leaves < 15 s to drain after preStop")
        else:
            check("API_TOKENS" not in envs, f"{w}: workers must not receive API_TOKENS")
            check(grace >= 30, f"{w}: terminationGracePeriodSeconds {grace} is shorter than the 30 s drain bound")
            if merged["keda"]["enabled"]:
                check("replicas" not in d["spec"], f"{w}: spec.replicas must be absent when KEDA is enabled")
            else:
                check(isinstance(d["spec"].get("replicas"), int), f"{w}: spec.replicas required without KEDA")
                check(d["spec"].get("replicas", 0) <= merged["kafka"]["partitions"], f"{w}: more replicas than partitions")

    for d in objs:
        spec = pod_spec(d)
        if spec is not None:
            check_pod(where(d), spec)

    services = {dig(d, "metadata", "name"): d for d in by_kind.get("Service", [])}
    api_svc = [d for d in services.values() if component(d) == "api"]
    if check(len(api_svc) == 1, f"[{label}] expected one API Service"):
        ports = dig(api_svc[0], "spec", "ports") or []
        check([p.get("targetPort") for p in ports] == ["http"], f"{where(api_svc[0])}: must expose only targetPort http")
        check(all(p.get("port") != admin_port and p.get("name") != "admin" for p in ports),
              f"{where(api_svc[0])}: must not expose the admin port")
    metrics_svc = [d for d in services.values() if component(d) == "metrics"]
    if merged["metricsService"]["enabled"] and check(len(metrics_svc) == 1, f"[{label}] expected one metrics Service"):
        check([p.get("targetPort") for p in dig(metrics_svc[0], "spec", "ports") or []] == ["admin"],
              f"{where(metrics_svc[0])}: must expose the admin port only")

    pdbs = {component(d) for d in by_kind.get("PodDisruptionBudget", [])}
    check(pdbs == {"api", "worker"}, f"[{label}] expected PodDisruptionBudgets for api and worker, got {sorted(pdbs)}")

    # Hooks: migrate (pre-install,pre-upgrade) strictly before the plans import.
    hooks = {component(d): d for d in objs if dig(d, "metadata", "annotations", "helm.sh/hook")}
    def weight(comp: str) -> int:
        return int(dig(hooks[comp], "metadata", "annotations", "helm.sh/hook-weight", default="0"))
    if merged["migrations"]["enabled"] and check("migrate" in hooks, f"[{label}] migration hook Job missing"):
        m = hooks["migrate"]
        check(m["kind"] == "Job" and dig(m, "metadata", "annotations", "helm.sh/hook") == "pre-install,pre-upgrade",
              f"{where(m)}: must be a pre-install,pre-upgrade hook Job")
        check(dig(pod_spec(m), "containers", 0, "args") == ["migrate"], f"{where(m)}: must run `migrate`")
    # Retention: a CronJob runs `maintain`, and a post-install/post-upgrade hook
    # runs it once, so partitions exist before the first midnight.
    if merged["cronJobs"]["maintain"]["enabled"]:
        crons = [d for d in by_kind.get("CronJob", []) if component(d) == "maintain"]
        if check(len(crons) == 1, f"[{label}] expected one maintain CronJob"):
            args = dig(crons[0], "spec", "jobTemplate", "spec", "template", "spec", "containers", 0, "args")
            check(args == ["maintain"], f"{where(crons[0])}: must run `maintain`")
        if merged["migrations"]["enabled"] and check("maintain" in hooks, f"[{label}] maintain hook Job missing"):
            m = hooks["maintain"]
            check(dig(m, "metadata", "annotations", "helm.sh/hook") == "post-install,post-upgrade",
                  f"{where(m)}: must be a post-install,post-upgrade hook Job")
            check(dig(pod_spec(m), "containers", 0, "args") == ["maintain"], f"{where(m)}: must run `maintain`")
    if merged["plansImport"]["enabled"] and merged["plans"]:
        if check("plans-import" in hooks and "plans" in hooks, f"[{label}] plans ConfigMap / import Job hooks missing"):
            job, cm = hooks["plans-import"], hooks["plans"]
            check(dig(pod_spec(job), "containers", 0, "args") == ["plans", "import", "/etc/interest-now/plans.json"],
                  f"{where(job)}: must run `plans import /etc/interest-now/plans.json`")
            if "migrate" in hooks:
                check(weight("migrate") < weight("plans-import"), f"[{label}] plans import must be weighted after the migration")
            check(weight("plans") < weight("plans-import"), f"[{label}] plans ConfigMap must be weighted before its import Job")
            try:
                doc = json.loads(dig(cm, "data", "plans.json", default=""))
                check(doc == {"plans": merged["plans"]}, f"{where(cm)}: plans.json differs from .Values.plans")
            except ValueError as exc:
                error(f"{where(cm)}: plans.json is not JSON: {exc}")

    crons = {component(d): d for d in by_kind.get("CronJob", [])}
    for comp, key in (("close-day", "closeDay"), ("settle", "settle")):
        if not merged["cronJobs"][key]["enabled"]:
            continue
        if not check(comp in crons, f"[{label}] CronJob {comp} missing"):
            continue
        cj = crons[comp]
        check(dig(cj, "spec", "timeZone") == "Asia/Seoul", f"{where(cj)}: timeZone must be Asia/Seoul")
        check(dig(cj, "spec", "concurrencyPolicy") == "Forbid", f"{where(cj)}: concurrencyPolicy must be Forbid")

    scaled = by_kind.get("ScaledObject", [])
    check(len(scaled) == (1 if merged["keda"]["enabled"] else 0), f"[{label}] ScaledObject count does not match keda.enabled")
    sms = by_kind.get("ServiceMonitor", [])
    check(len(sms) == (1 if merged["serviceMonitor"]["enabled"] else 0), f"[{label}] ServiceMonitor count does not match")
    rules = by_kind.get("PrometheusRule", [])
    check(len(rules) == (1 if merged["prometheusRule"]["enabled"] else 0), f"[{label}] PrometheusRule count does not match")
    dashboards = [d for d in by_kind.get("ConfigMap", []) if component(d) == "dashboard"]
    check(len(dashboards) == (1 if merged["grafanaDashboard"]["enabled"] else 0),
          f"[{label}] dashboard ConfigMap count does not match grafanaDashboard.enabled")
    for d in dashboards:
        check_dashboard(where(d), d, merged)
    nps = by_kind.get("NetworkPolicy", [])
    if merged["networkPolicy"]["enabled"]:
        check(len(nps) == 2, f"[{label}] expected 2 NetworkPolicies")
        for np in nps:
            for rule in dig(np, "spec", "ingress", default=[]):
                ports = [p.get("port") for p in rule.get("ports") or []]
                if "admin" in ports:
                    peers = rule.get("from") or []
                    check(bool(peers) and all(p.get("namespaceSelector") for p in peers),
                          f"{where(np)}: the admin port may only be reached from selected namespaces")
    else:
        check(not nps, f"[{label}] NetworkPolicy rendered while disabled")


# ----------------------------------------------------------------- cron wrappers


def kst_epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=KST).timestamp())


CRON_CASES = {
    "close-day": [("2026-03-01T00:05:00", "2026-02-28"), ("2026-01-01T00:05:00", "2025-12-31"),
                  ("2028-03-01T00:05:00", "2028-02-29"), ("2026-06-15T08:59:59", "2026-06-14")],
    "settle": [("2026-03-01T00:30:00", "2026-02-28"), ("2028-03-01T00:30:00", "2028-02-29"),
               ("2026-01-01T00:30:00", "2025-12-31"), ("2026-07-02T10:00:00", "2026-06-30"),
               ("2026-10-09T23:59:59", "2026-09-30")],
}


def check_cron_wrappers(docs: list[tuple[str, dict[str, Any]]]) -> int:
    """Runs each CronJob's shell wrapper with a pinned `date +%s` and a stub binary."""
    real_date = shutil.which("date")
    shells = [s for s in (shutil.which("sh"), shutil.which("busybox")) if s]
    if not check(real_date is not None and bool(shells), "cron wrappers: need `sh` and `date` on PATH"):
        return 0
    runs = 0
    crons = {component(d): d for _, d in docs if d.get("kind") == "CronJob"}
    with tempfile.TemporaryDirectory() as tmp:
        for shell in shells:
            # Under busybox, `date` is busybox's own applet too (the image may be busybox-based).
            busybox = shell.endswith("busybox")
            stub = Path(tmp) / Path(shell).name
            stub.mkdir()
            date_cmd = f"{shell} date" if busybox else real_date
            (stub / "date").write_text(
                f'#!/bin/sh\nif [ "$#" -eq 1 ] && [ "$1" = "+%s" ]; then echo "$FAKE_NOW"; exit 0; fi\nexec {date_cmd} "$@"\n')
            (stub / "interest-now").write_text('#!/bin/sh\necho "ARGS $*"\n')
            for f in stub.iterdir():
                f.chmod(0o755)
            for comp, cases in CRON_CASES.items():
                cj = crons.get(comp)
                if not check(cj is not None, f"cron wrappers: CronJob {comp} not rendered"):
                    continue
                c = dig(pod_spec(cj), "containers", 0)
                command, args = c.get("command") or [], c.get("args") or []
                if not check(command[-1:] == ["-c"] and len(args) == 1, f"cron wrappers: {comp} must be `<shell> -c <script>`"):
                    continue
                argv = [shell, "sh", "-c", args[0]] if busybox else [shell, "-c", args[0]]
                for now, want in cases:
                    env = {"PATH": f"{stub}:{os.environ.get('PATH', '/usr/bin:/bin')}", "FAKE_NOW": str(kst_epoch(now)),
                           "TZ": "UTC"}
                    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
                    runs += 1
                    got = [l for l in proc.stdout.splitlines() if l.startswith("ARGS ")]
                    check(proc.returncode == 0 and got == [f"ARGS {comp} --date {want}"],
                          f"cron wrappers: {comp} at {now} KST under {Path(shell).name}: want `--date {want}`, "
                          f"got rc={proc.returncode} out={proc.stdout.strip()!r} err={proc.stderr.strip()!r}")
    return runs


# -------------------------------------------------------------------- bad values


BAD_VALUES: list[tuple[str, str, str]] = [
    # (what, values YAML as a user would pass with -f, fragment expected in the error)
    ("partitions as a word", "kafka:\n  partitions: twelve\n", "/kafka/partitions"),
    ("zero partitions", "kafka:\n  partitions: 0\n", "/kafka/partitions"),
    ("numeric image tag", "image:\n  tag: 1.10\n", "/image/tag"),
    ("claimWaitMs as a string", "config:\n  claimWaitMs: \"2000\"\n", "/config/claimWaitMs"),
    ("privileged http port", "config:\n  httpPort: 80\n", "/config/httpPort"),
    ("unknown top-level key", "replicaCount: 3\n", "replicaCount"),
    ("unknown nested key", "api:\n  replica: 3\n", "replica"),
    ("writable root filesystem", "containerSecurityContext:\n  readOnlyRootFilesystem: false\n", "readOnlyRootFilesystem"),
    ("root user allowed", "podSecurityContext:\n  runAsNonRoot: false\n", "runAsNonRoot"),
    ("secret as a literal env", "extraEnv:\n  - name: DATABASE_URL\n    value: postgres://u:p@db/x\n", "/extraEnv/0"),
    ("no existing secret", "secrets:\n  existingSecret: \"\"\n", "/secrets/existingSecret"),
    ("bad pull policy", "image:\n  pullPolicy: Sometimes\n", "/image/pullPolicy"),
    ("float rate", "plans:\n  - id: basic\n    currency: KRW\n    schedule:\n      - effective_from: \"2026-01-01T00:00:00+09:00\"\n"
     "        tiers:\n          - rate_percent: 2.0\n", "rate_percent"),
    ("unknown day count", "plans:\n  - id: basic\n    currency: KRW\n    day_count: 30/360\n    schedule:\n"
     "      - effective_from: \"2026-01-01T00:00:00+09:00\"\n        tiers:\n          - rate_percent: \"2.0\"\n", "day_count"),
    ("bad cron", "cronJobs:\n  closeDay:\n    schedule: daily\n", "/cronJobs/closeDay/schedule"),
    ("KEDA above partitions", "keda:\n  enabled: true\n  maxReplicaCount: 13\n", "must not exceed kafka.partitions"),
    ("KEDA floor above max", "keda:\n  enabled: true\n  maxReplicaCount: 4\n  minReplicaCount: 2\n"
     "  midnightFloor:\n    desiredReplicas: 8\n", "desiredReplicas"),
    ("workers above partitions", "worker:\n  replicas: 13\n", "must not exceed kafka.partitions"),
    ("same http and admin port", "config:\n  httpPort: 9090\n", "must differ"),
    ("plan reload past the import lead", "config:\n  planReloadSecs: 60\n", "/config/planReloadSecs"),
    ("no HTTP connections", "config:\n  httpConnectionsMax: 0\n", "/config/httpConnectionsMax"),
    ("alert threshold as a word", "prometheusRule:\n  thresholds:\n    outboxPending: many\n", "/prometheusRule/thresholds/outboxPending"),
    ("alert for not a duration", "prometheusRule:\n  for:\n    consumerLag: five minutes\n", "/prometheusRule/for/consumerLag"),
    ("dashboard label not a label key", "grafanaDashboard:\n  label: \"grafana dashboard\"\n", "/grafanaDashboard/label"),
]


def check_bad_values(chart: "helm.Chart") -> int:
    rejected = 0
    for what, text, fragment in BAD_VALUES:
        values = helm.values_from_yaml(text)
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except (helm.HelmValuesError, helm.HelmRenderError) as exc:
            if check(fragment in str(exc), f"bad values ({what}): rejected, but the message lacks {fragment!r}: {exc}"):
                rejected += 1
            continue
        error(f"bad values ({what}) were accepted:\n{text}")
    return rejected


# -------------------------------------------------------------------------- main


def main() -> int:
    if not CHART.is_dir():
        print(f"check-helm: no chart at {CHART}", file=sys.stderr)
        return 1
    production = helm.values_from_yaml(PRODUCTION_VALUES.read_text())
    scenarios: list[tuple[str, dict[str, Any] | None]] = [
        ("default", None),
        ("production", production),
        # The other branches of the templates.
        ("variants", helm.values_from_yaml("""
fullnameOverride: payments-interest
image: {digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
serviceAccount: {create: false, name: interest-now-runner}
kafka: {topicPrefix: "stg.", partitions: 6}
keda: {enabled: true, minReplicaCount: 1, maxReplicaCount: 6, fallbackReplicas: 2, midnightFloor: {enabled: false}}
api: {preStop: {nativeSleep: false, sleepSeconds: 3}, pdb: {maxUnavailable: "50%"}}
topologySpread: {enabled: false}
extraEnv: [{name: EXTRA_FLAG, value: "1"}]
serviceMonitor: {enabled: true, namespace: monitoring, metricRelabelings: [{action: drop, regex: "go_.*", sourceLabels: [__name__]}]}
grafanaDashboard: {enabled: true, namespace: monitoring, label: grafana_dashboard_custom, labelValue: "yes"}
prometheusRule: {enabled: true, namespace: monitoring, thresholds: {consumerLagMessages: 500}}
networkPolicy: {enabled: true}
plans: []
cronJobs: {settle: {enabled: false}}
""")),
    ]

    for label, values in scenarios[:2]:
        lint(label, values)

    rendered = validated = 0
    prod_docs: list[tuple[str, dict[str, Any]]] = []
    with helm.Chart.load(CHART) as chart:
        for label, values in scenarios:
            try:
                chart.validate_schema(values)
                docs = render(chart, values)
            except helm.HelmError as exc:
                error(f"[{label}] render failed: {exc}")
                continue
            merged = chart.merge_values(values)
            rendered += len(docs)
            for template, doc in docs:
                where = f"[{label}] {template}: {name_of(doc)}"
                if not (doc.get("apiVersion") and doc.get("kind") and dig(doc, "metadata", "name")):
                    error(f"{where}: apiVersion, kind and metadata.name are required")
                    continue
                if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
                    validated += validate_crd(where, doc, merged)
                else:
                    validated += validate_builtin(where, doc)
            check_invariants(label, docs, merged)
            if label == "production":
                prod_docs = docs
        wrapper_runs = check_cron_wrappers(prod_docs)
        rejected = check_bad_values(chart)

    for msg in errors:
        print(f"FAIL {msg}", file=sys.stderr)
    print(f"helm: {rendered} manifests rendered, {validated} validated "
          f"(k8s {KUBE_VERSION} strict + CRD structural), {rejected}/{len(BAD_VALUES)} bad value sets rejected, "
          f"{wrapper_runs} cron wrapper runs, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
