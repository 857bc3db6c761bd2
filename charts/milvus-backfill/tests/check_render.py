#!/usr/bin/env python3
"""Checks a rendered chart: check_render.py SCENARIO RELEASE_NAMESPACE < objects.json

objects.json is the rendered chart as a stream of JSON objects (helm template | kubectl
label --local -o json). Standard library only. Prints one line per check; exits 1 on a
failure.
"""
import json
import sys

FULL = "t-milvus-backfill"
WORKER_SA = FULL + "-worker"

failures = 0


def check(cond, what):
    global failures
    print(("  ok   " if cond else "  FAIL ") + what)
    if not cond:
        failures += 1


def load(stream):
    text, dec, pos, out = stream.read(), json.JSONDecoder(), 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        obj, pos = dec.raw_decode(text, pos)
        out.extend(obj.get("items", []) if obj.get("kind") == "List" else [obj])


def find(objs, kind, name=None, ns=None):
    return [o for o in objs if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)
            and (ns is None or o["metadata"].get("namespace") == ns)]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def rules_map(rules):
    """{(group, resource): set(verbs)}"""
    m = {}
    for r in rules:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                m.setdefault((g, res), set()).update(r.get("verbs", []))
    return m


# Exactly what the operator's code calls (see templates/_helpers.tpl); a rule the code does not
# use is a finding, not a convenience.
EXPECTED_RULES = {
    ("milvusbackfill.io", "backfills"): {"list", "watch"},
    ("milvusbackfill.io", "backfills/status"): {"get", "patch"},
    ("milvusbackfill.io", "backfills/finalizers"): {"update"},
    ("batch", "jobs"): {"create", "get", "list", "watch", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "secrets"): {"get"},
}


def check_rules(rules, read_secrets, where):
    m = rules_map(rules)
    want = dict(EXPECTED_RULES)
    if not read_secrets:
        del want[("", "secrets")]
    check(m == want, f"{where}: least-privilege rules exactly as expected (secrets get: {read_secrets})")
    flat = json.dumps(rules)
    check('"*"' not in flat, f"{where}: no wildcard in rules")


def check_common(objs, ns, s):
    deps = find(objs, "Deployment", FULL, ns)
    check(len(deps) == 1, "one operator Deployment")
    d = deps[0]
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "pod runs as non-root (runAsNonRoot, uid != 0)")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccomp RuntimeDefault")
    check(csc.get("readOnlyRootFilesystem") is True, "container readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, "container allowPrivilegeEscalation false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], "container drops ALL capabilities")
    check(csc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccomp RuntimeDefault")
    check(c["command"] == ["/usr/local/bin/milvus-backfill-operator"] and c["args"][0] == "run", "runs /usr/local/bin/milvus-backfill-operator run")
    check(any(p["containerPort"] == 8080 and p["name"] == "http-metrics" for p in c["ports"]), "containerPort 8080 named http-metrics")
    lp, rp = c.get("livenessProbe", {}).get("httpGet", {}), c.get("readinessProbe", {}).get("httpGet", {})
    check(lp.get("path") == "/healthz" and lp.get("port") in (8080, "http-metrics"), "livenessProbe GET /healthz on 8080")
    check(rp.get("path") == "/readyz" and rp.get("port") in (8080, "http-metrics"), "readinessProbe GET /readyz on 8080")
    res = c.get("resources", {})
    check(bool(res.get("requests")) and bool(res.get("limits", {}).get("memory")), "resources: requests and a memory limit")
    check(any(v["mountPath"] == "/tmp" for v in c.get("volumeMounts", [])), "writable /tmp (emptyDir)")
    e = env_of(c)
    check(e.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace",
          "POD_NAMESPACE from fieldRef metadata.namespace")
    check(e.get("LOG_FORMAT", {}).get("value") in ("json", "plain"), "LOG_FORMAT set")
    check(pod["serviceAccountName"] == FULL, "operator uses its own ServiceAccount")
    check(e.get("WORKER_SERVICE_ACCOUNT", {}).get("value") == WORKER_SA, "WORKER_SERVICE_ACCOUNT = worker ServiceAccount")
    check(find(objs, "ServiceAccount", FULL, ns) != [], "operator ServiceAccount exists")
    wsas = find(objs, "ServiceAccount", WORKER_SA)
    check(bool(wsas) and all(w.get("automountServiceAccountToken") is False for w in wsas),
          "worker ServiceAccount(s) with automountServiceAccountToken false")
    bound = [b for b in objs if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
             for sub in b.get("subjects", []) if sub.get("name") == WORKER_SA]
    check(not bound, "no (Cluster)RoleBinding names the worker ServiceAccount")
    for b in objs:
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            ok = all(sub["kind"] == "ServiceAccount" and sub["name"] == FULL and sub["namespace"] == ns for sub in b["subjects"])
            check(ok, f"{b['kind']} {b['metadata'].get('namespace', '')}/{b['metadata']['name']} binds only the operator SA")
    svc = find(objs, "Service", FULL + "-metrics", ns)
    check(len(svc) == 1 and svc[0]["spec"]["ports"][0]["port"] == 8080, "metrics Service on 8080")
    crds = find(objs, "CustomResourceDefinition", "backfills.milvusbackfill.io")
    if s.get("crds", True):
        check(len(crds) == 1, "Backfill CRD rendered")
        if crds:
            crd = crds[0]
            check(crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep", "CRD annotated helm.sh/resource-policy: keep")
            check(crd["spec"]["group"] == "milvusbackfill.io" and crd["spec"]["names"]["kind"] == "Backfill"
                  and crd["spec"]["names"]["plural"] == "backfills" and "bf" in crd["spec"]["names"].get("shortNames", []),
                  "CRD group/kind/plural/shortName milvusbackfill.io/Backfill/backfills/bf")
            check(any(v.get("subresources", {}).get("status") is not None for v in crd["spec"]["versions"]), "CRD has the status subresource")
    else:
        check(not crds, "no CRD rendered (crds.install=false)")
    return d, c, e


def main():
    scenario, ns = sys.argv[1], sys.argv[2]
    objs = load(sys.stdin)
    print(f"[{scenario}] {len(objs)} objects: " + ", ".join(sorted({o['kind'] for o in objs})))
    s = {}
    if scenario == "no-crds":
        s["crds"] = False
    d, c, e = check_common(objs, ns, s)
    cr, crb = find(objs, "ClusterRole"), find(objs, "ClusterRoleBinding")
    roles = [r for r in find(objs, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    lroles = find(objs, "Role", FULL + "-leader-election", ns)
    # Planning Jobs (the default) need no Secret in the operator; in-process planning does.
    read_secrets = scenario == "in-process"
    planning = "in-process" if scenario in ("in-process", "no-secrets") else "job"
    check(e.get("PLANNING", {}).get("value") == planning, f"PLANNING = {planning}")
    if scenario == "operator-storage":
        for var, key in (("AWS_ACCESS_KEY_ID", "accesskey"), ("AWS_SECRET_ACCESS_KEY", "secretkey")):
            ref = e.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(ref == {"name": "ops-s3", "key": key} and "value" not in e.get(var, {}),
                  f"{var} from Secret ops-s3 key {key}, never a literal")
    else:
        check("AWS_ACCESS_KEY_ID" not in e and "AWS_SECRET_ACCESS_KEY" not in e, "no storage keys without operator.storageCredentials")

    if scenario == "watch-namespaces":
        check(e["WATCH_NAMESPACES"]["value"] == "team-a,team-b", "WATCH_NAMESPACES = team-a,team-b")
        check(not cr and not crb, "no ClusterRole / ClusterRoleBinding")
        check(sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"], "one Role per watched namespace")
        check(sorted(b["metadata"]["namespace"] for b in find(objs, "RoleBinding") if not b["metadata"]["name"].endswith("-leader-election")) == ["team-a", "team-b"],
              "one RoleBinding per watched namespace")
        for r in roles:
            check_rules(r["rules"], read_secrets, f"Role {r['metadata']['namespace']}")
        check(sorted(w["metadata"]["namespace"] for w in find(objs, "ServiceAccount", WORKER_SA)) == sorted([ns, "team-a", "team-b"]),
              "worker ServiceAccount in the release and each watched namespace")
    else:
        check(e["WATCH_NAMESPACES"]["value"] == "", "WATCH_NAMESPACES empty (all namespaces)")
        check(len(cr) == 1 and len(crb) == 1 and not roles, "ClusterRole + ClusterRoleBinding, no per-namespace Role")
        if cr:
            check_rules(cr[0]["rules"], read_secrets, "ClusterRole")
            check(crb[0]["roleRef"]["name"] == cr[0]["metadata"]["name"], "ClusterRoleBinding refers to the ClusterRole")

    check(d["spec"]["replicas"] == (2 if scenario == "replicas-2" else 1), "replicas")
    if scenario != "no-leader-election":
        # On by default, with one replica too: a rolling update briefly runs two.
        check(e["LEADER_ELECTION"]["value"] == "true", "LEADER_ELECTION true")
        check(e["LEASE_NAME"]["value"] == FULL, "LEASE_NAME is the release's full name")
        check(d["spec"]["strategy"]["type"] == "RollingUpdate", "strategy RollingUpdate")
        check(len(lroles) == 1 and rules_map(lroles[0]["rules"]) == {("coordination.k8s.io", "leases"): {"get", "create", "update"}},
              "leader-election Role: leases get/create/update in the release namespace")
        check(len(find(objs, "RoleBinding", FULL + "-leader-election", ns)) == 1, "leader-election RoleBinding")
    else:
        check(e["LEADER_ELECTION"]["value"] == "false", "LEADER_ELECTION false")
        check(d["spec"]["strategy"]["type"] == "Recreate", "strategy Recreate (never two controllers)")
        check(not lroles, "no leader-election Role")

    sm, npol = find(objs, "ServiceMonitor"), find(objs, "NetworkPolicy")
    if scenario == "monitoring":
        check(len(sm) == 1 and sm[0]["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor monitoring.coreos.com/v1")
        if sm:
            ep = sm[0]["spec"]["endpoints"][0]
            check(ep["port"] == "http-metrics" and ep["path"] == "/metrics", "ServiceMonitor scrapes http-metrics /metrics")
            check(sm[0]["metadata"]["labels"].get("release") == "prom", "ServiceMonitor carries serviceMonitor.labels")
        check(len(npol) == 1, "NetworkPolicy rendered")
        if npol:
            spec = npol[0]["spec"]
            check(spec["policyTypes"] == ["Ingress"], "NetworkPolicy policyTypes [Ingress] (egress open)")
            ports = [p for rule in spec["ingress"] for p in rule.get("ports", [])]
            check(len(spec["ingress"]) == 1 and ports == [{"port": 8080, "protocol": "TCP"}], "NetworkPolicy allows ingress to TCP 8080 only")
            check(spec["podSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"], "NetworkPolicy selects the operator pods")
    else:
        check(not sm and not npol, "no ServiceMonitor, no NetworkPolicy (off by default)")

    pdbs = find(objs, "PodDisruptionBudget")
    if scenario == "tuned":
        check(e.get("CONCURRENCY", {}).get("value") == "8", "CONCURRENCY = concurrency")
        timing = [e.get(v, {}).get("value") for v in ("LEASE_DURATION_SECONDS", "RENEW_DEADLINE_SECONDS", "RETRY_PERIOD_SECONDS")]
        check(timing == ["30", "20", "4"], "lease timings from leaderElection.*Seconds")
        check(len(pdbs) == 1 and pdbs[0]["spec"].get("minAvailable") == 1 and "maxUnavailable" not in pdbs[0]["spec"],
              "PodDisruptionBudget minAvailable 1")
        if pdbs:
            check(pdbs[0]["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"], "the budget selects the operator pods")
        check(all(o["metadata"].get("labels", {}).get("team") == "search" for o in objs), "commonLabels on every object")
        pod = d["spec"]["template"]["spec"]
        check(any(v.get("name") == "ca" and v.get("configMap", {}).get("name") == "ca-bundle" for v in pod["volumes"])
              and any(v["name"] == "tmp" for v in pod["volumes"]), "extraVolumes beside /tmp")
        check(any(m.get("mountPath") == "/etc/ssl/ca" for m in c["volumeMounts"]), "extraVolumeMounts")
    else:
        check(not pdbs, "no PodDisruptionBudget by default")
        check(e.get("CONCURRENCY", {}).get("value") == "4", "CONCURRENCY 4 by default")
        timing = [e.get(v, {}).get("value") for v in ("LEASE_DURATION_SECONDS", "RENEW_DEADLINE_SECONDS", "RETRY_PERIOD_SECONDS")]
        check(timing == ["15", "10", "2"], "client-go's lease timings by default")

    if scenario == "default":
        check(e["LOG_FORMAT"]["value"] == "json", "LOG_FORMAT json by default")
        check(e.get("LOG_LEVEL", {}).get("value") == "info", "LOG_LEVEL info by default (value logLevel)")
        check(c["image"] == "milvus-backfill:0.1.0" and e["WORKER_IMAGE"]["value"] == c["image"], "image tag = appVersion; WORKER_IMAGE = operator image")

    print(f"[{scenario}] {'FAILED: %d check(s)' % failures if failures else 'all checks passed'}")
    sys.exit(1 if failures else 0)


main()
