//! Step "container environment", built as the kubelet builds it: `envFrom` (Secrets,
//! ConfigMaps, prefix, optional), then `env` (`value` with `$(VAR)` expansion, secretKeyRef,
//! configMapKeyRef, fieldRef, resourceFieldRef). Pure except [`ApiSources`], the only IO:
//! it reads the referenced Secrets and ConfigMaps from the API, each once per attempt.

use crate::runner::NodeFacts;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvFromSource, EnvVar, Pod, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap};

/// Environment variables in order; a later `set_env` of a name replaces the value in place.
pub type Env = Vec<(String, String)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Secret,
    ConfigMap,
}

impl SourceKind {
    /// As in "secret \"x\" not found".
    fn lower(self) -> &'static str {
        match self {
            SourceKind::Secret => "secret",
            SourceKind::ConfigMap => "configmap",
        }
    }

    /// As in "couldn't find key k in Secret ns/x".
    fn kind(self) -> &'static str {
        match self {
            SourceKind::Secret => "Secret",
            SourceKind::ConfigMap => "ConfigMap",
        }
    }
}

/// Where the data of Secrets and ConfigMaps comes from.
pub(crate) trait Sources {
    /// All key/value pairs of the object; Ok(None) when it does not exist; Err when it could
    /// not be read (the message becomes the container's CreateContainerConfigError).
    async fn get(&mut self, kind: SourceKind, name: &str) -> Result<Option<Env>, String>;
}

/// Reads from the API server, each object once (all containers of an attempt share it).
pub struct ApiSources {
    client: Client,
    ns: String,
    cache: HashMap<(SourceKind, String), Option<Env>>,
}

impl ApiSources {
    pub fn new(client: Client, ns: &str) -> Self {
        ApiSources {
            client,
            ns: ns.to_string(),
            cache: HashMap::new(),
        }
    }

    async fn fetch(&self, kind: SourceKind, name: &str) -> Result<Option<Env>, String> {
        let ns = &self.ns;
        let err = |e: kube::Error| format!("getting {} {ns}/{name}: {e}", kind.lower());
        Ok(match kind {
            SourceKind::Secret => Api::<Secret>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(err)?
                .map(|s| secret_data(&s)),
            SourceKind::ConfigMap => Api::<ConfigMap>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(err)?
                .map(|c| config_map_data(&c)),
        })
    }
}

impl Sources for ApiSources {
    async fn get(&mut self, kind: SourceKind, name: &str) -> Result<Option<Env>, String> {
        let key = (kind, name.to_string());
        if let Some(v) = self.cache.get(&key) {
            return Ok(v.clone());
        }
        let v = self.fetch(kind, name).await?;
        self.cache.insert(key, v.clone());
        Ok(v)
    }
}

/// `data` then `stringData`, so a key in both ends with the `stringData` value in envFrom.
fn secret_data(s: &Secret) -> Env {
    let mut out: Env = Vec::new();
    for (k, v) in s.data.clone().unwrap_or_default() {
        out.push((k, String::from_utf8_lossy(&v.0).into_owned()));
    }
    for (k, v) in s.string_data.clone().unwrap_or_default() {
        out.push((k, v));
    }
    out
}

fn config_map_data(c: &ConfigMap) -> Env {
    let mut out: Env = c.data.clone().unwrap_or_default().into_iter().collect();
    for (k, v) in c.binary_data.clone().unwrap_or_default() {
        out.push((k, String::from_utf8_lossy(&v.0).into_owned()));
    }
    out
}

/// The environment of container `c`: `base`, then `envFrom`, then `env`. Sources are read in
/// the order they are referenced, and the first problem is the error (as the kubelet reports
/// it), so that a missing Secret is named even when later ones are missing too.
pub async fn build_env<S: Sources>(
    sources: &mut S,
    node: &NodeFacts,
    pod: &Pod,
    c: &Container,
    base: &[(String, String)],
) -> Result<Env, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Env = base.to_vec();
    for ef in c.env_from.iter().flatten() {
        let Some(src) = EnvFromRef::of(ef) else { continue };
        let data = sources.get(src.kind, &src.name).await?;
        apply_env_from(&mut env, &src, data)?;
    }
    for e in c.env.iter().flatten() {
        let value = match key_ref(e) {
            Some(r) => {
                let data = sources.get(r.kind, &r.name).await?;
                key_value(&r, data, &ns)?
            }
            None => Some(plain_value(e, &env, node, pod, c)?),
        };
        if let Some(v) = value {
            set_env(&mut env, e.name.clone(), v);
        }
    }
    Ok(env)
}

/// One `envFrom` entry.
struct EnvFromRef {
    kind: SourceKind,
    name: String,
    optional: bool,
    prefix: String,
}

impl EnvFromRef {
    /// None for an entry with neither secretRef nor configMapRef (skipped).
    fn of(ef: &EnvFromSource) -> Option<Self> {
        let prefix = ef.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = if let Some(s) = &ef.secret_ref {
            (SourceKind::Secret, s.name.clone(), s.optional.unwrap_or(false))
        } else if let Some(cm) = &ef.config_map_ref {
            (SourceKind::ConfigMap, cm.name.clone(), cm.optional.unwrap_or(false))
        } else {
            return None;
        };
        Some(EnvFromRef {
            kind,
            name,
            optional,
            prefix,
        })
    }
}

fn apply_env_from(env: &mut Env, src: &EnvFromRef, data: Option<Env>) -> Result<(), String> {
    match data {
        Some(kv) => {
            for (k, v) in kv {
                set_env(env, format!("{}{k}", src.prefix), v);
            }
            Ok(())
        }
        None if src.optional => Ok(()),
        None => Err(format!("{} \"{}\" not found", src.kind.lower(), src.name)),
    }
}

/// A `secretKeyRef` / `configMapKeyRef` of one `env` entry.
struct KeyRef {
    kind: SourceKind,
    name: String,
    key: String,
    optional: bool,
}

fn key_ref(e: &EnvVar) -> Option<KeyRef> {
    let vf = e.value_from.as_ref()?;
    if let Some(s) = &vf.secret_key_ref {
        Some(KeyRef {
            kind: SourceKind::Secret,
            name: s.name.clone(),
            key: s.key.clone(),
            optional: s.optional.unwrap_or(false),
        })
    } else {
        vf.config_map_key_ref.as_ref().map(|s| KeyRef {
            kind: SourceKind::ConfigMap,
            name: s.name.clone(),
            key: s.key.clone(),
            optional: s.optional.unwrap_or(false),
        })
    }
}

/// The value of a key reference; Ok(None): optional and missing, so the variable is not set.
fn key_value(r: &KeyRef, data: Option<Env>, ns: &str) -> Result<Option<String>, String> {
    let Some(kv) = data else {
        if r.optional {
            return Ok(None);
        }
        return Err(format!("{} \"{}\" not found", r.kind.lower(), r.name));
    };
    match kv.into_iter().find(|(k, _)| *k == r.key) {
        Some((_, v)) => Ok(Some(v)),
        None if r.optional => Ok(None),
        None => Err(format!(
            "couldn't find key {} in {} {ns}/{}",
            r.key,
            r.kind.kind(),
            r.name
        )),
    }
}

/// An `env` entry that needs no Secret/ConfigMap: `value` (expanded against the variables
/// so far), fieldRef or resourceFieldRef. A `valueFrom` with nothing known gives "".
fn plain_value(e: &EnvVar, env: &Env, node: &NodeFacts, pod: &Pod, c: &Container) -> Result<String, String> {
    let Some(vf) = &e.value_from else {
        return Ok(expand(e.value.as_deref().unwrap_or(""), env));
    };
    if let Some(f) = &vf.field_ref {
        field_value(node, pod, &f.field_path)
    } else if let Some(r) = &vf.resource_field_ref {
        resource_value(node, c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))
    } else {
        Ok(String::new())
    }
}

pub fn set_env(env: &mut Env, k: String, v: String) {
    if let Some(e) = env.iter_mut().find(|(n, _)| *n == k) {
        e.1 = v;
    } else {
        env.push((k, v));
    }
}

/// Kubernetes `$(VAR)` expansion: `$$` is a literal `$`, unknown `$(X)` stays as is.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some((_, v)) = env.iter().find(|(k, _)| k == name) {
                        out.push_str(v);
                    } else {
                        out.push_str(&s[i..i + 3 + end]);
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A Kubernetes quantity as a number (`500m` = 0.5, `64Mi` = 67108864); None if malformed.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (s, m) in suffixes {
        if let Some(n) = q.strip_suffix(s) {
            return n.parse::<f64>().ok().map(|v| v * m);
        }
    }
    q.parse::<f64>().ok()
}

/// `resourceFieldRef`: `limits.X` defaults to the node's capacity, `requests.X` to the limit
/// and then 0 (kubelet rules); the result is divided by `divisor` and rounded up.
pub fn resource_value(
    node: &NodeFacts,
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let (kind, res) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {resource}"))?;
    let r = c.resources.as_ref();
    let get = |m: Option<&BTreeMap<String, Quantity>>| m.and_then(|m| m.get(res)).map(|q| q.0.clone());
    let node_val = match res {
        "cpu" => node.cpus.to_string(),
        "memory" => node.mem_bytes.to_string(),
        _ => "0".into(),
    };
    let raw = match kind {
        "limits" => get(r.and_then(|r| r.limits.as_ref())).unwrap_or(node_val),
        "requests" => get(r.and_then(|r| r.requests.as_ref()))
            .or_else(|| get(r.and_then(|r| r.limits.as_ref())))
            .unwrap_or_else(|| "0".into()),
        _ => return Err(format!("unsupported resource {resource}")),
    };
    let v = parse_quantity(&raw).ok_or_else(|| format!("bad quantity {raw}"))?;
    let d = divisor.and_then(parse_quantity).filter(|d| *d > 0.0).unwrap_or(1.0);
    Ok(format!("{}", (v / d).ceil() as i64))
}

/// `fieldRef` (downward API). Every IP is the node's: Pods share the host network.
pub fn field_value(node: &NodeFacts, pod: &Pod, path: &str) -> Result<String, String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_get = |m: &Option<BTreeMap<String, String>>, key: &str| {
        m.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    let bracketed = |p: &str, prefix: &str| p.strip_prefix(prefix)?.strip_suffix("']").map(str::to_string);
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.hostIP" | "status.podIPs" | "status.hostIPs" => node.ip.clone(),
        p => {
            if let Some(k) = bracketed(p, "metadata.labels['") {
                map_get(&m.labels, &k)
            } else if let Some(k) = bracketed(p, "metadata.annotations['") {
                map_get(&m.annotations, &k)
            } else {
                return Err(format!("unsupported fieldRef fieldPath {p}"));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeFacts {
        NodeFacts {
            cpus: 4,
            mem_bytes: 8 << 30,
            ip: "127.0.0.1".into(),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn test_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p1", "namespace": "ns1", "uid": "u-1",
                "labels": {"app": "web"}, "annotations": {"a/b": "x y"}},
            "spec": {"nodeName": "mb-pod-runner", "containers": [{"name": "main"}]}
        }))
        .unwrap()
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    /// Fixed Secrets/ConfigMaps; records every lookup so the order can be checked.
    #[derive(Default)]
    struct Fixed {
        objects: HashMap<(SourceKind, String), Env>,
        broken: Option<String>,
        asked: Vec<String>,
    }

    impl Fixed {
        fn with(mut self, kind: SourceKind, name: &str, data: &[(&str, &str)]) -> Self {
            self.objects.insert((kind, name.into()), env(data));
            self
        }
    }

    impl Sources for Fixed {
        async fn get(&mut self, kind: SourceKind, name: &str) -> Result<Option<Env>, String> {
            self.asked.push(format!("{}/{name}", kind.lower()));
            if self.broken.as_deref() == Some(name) {
                return Err(format!("getting {} ns1/{name}: boom", kind.lower()));
            }
            Ok(self.objects.get(&(kind, name.to_string())).cloned())
        }
    }

    async fn build(sources: &mut Fixed, c: serde_json::Value) -> Result<Env, String> {
        let base = env(&[("PATH", "/bin"), ("HOME", "/pod")]);
        build_env(sources, &node(), &test_pod(), &container(c), &base).await
    }

    #[test]
    fn expand_substitutes_known_variables() {
        let e = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &e), "1-two");
        assert_eq!(expand("x$(A)y", &e), "x1y");
        assert_eq!(expand("no vars", &e), "no vars");
        assert_eq!(expand("", &e), "");
    }

    #[test]
    fn expand_escapes_and_unknowns() {
        let e = env(&[("A", "1")]);
        assert_eq!(expand("$$", &e), "$");
        assert_eq!(expand("$$(A)", &e), "$(A)");
        assert_eq!(expand("$$$(A)", &e), "$1");
        assert_eq!(expand("$(UNKNOWN)", &e), "$(UNKNOWN)");
        assert_eq!(expand("a $(UNKNOWN) $(A)", &e), "a $(UNKNOWN) 1");
        // A lone `$`, `$` at the end, and `$(` without `)` are copied.
        assert_eq!(expand("$A $", &e), "$A $");
        assert_eq!(expand("$(A", &e), "$(A");
        assert_eq!(expand("€$(A)€", &e), "€1€");
    }

    #[test]
    fn set_env_replaces_in_place() {
        let mut e = env(&[("A", "1"), ("B", "2")]);
        set_env(&mut e, "A".into(), "9".into());
        set_env(&mut e, "C".into(), "3".into());
        assert_eq!(e, env(&[("A", "9"), ("B", "2"), ("C", "3")]));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity(" 1.5 "), Some(1.5));
        assert_eq!(parse_quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1Gi"), Some(1024f64.powi(3)));
        assert_eq!(parse_quantity("1Ki"), Some(1024.0));
        assert_eq!(parse_quantity("3k"), Some(3000.0));
        assert_eq!(parse_quantity("2M"), Some(2e6));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert!((parse_quantity("100n").unwrap() - 1e-7).abs() < 1e-20);
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("abc"), None);
        assert_eq!(parse_quantity("Mi"), None);
        assert_eq!(parse_quantity(""), None);
    }

    #[test]
    fn resource_values_round_up_and_default_to_node() {
        let c = container(json!({"name": "m", "resources": {
            "limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}}}));
        let n = node();
        assert_eq!(resource_value(&n, &c, "limits.cpu", None).unwrap(), "1");
        assert_eq!(resource_value(&n, &c, "limits.cpu", Some("1m")).unwrap(), "500");
        assert_eq!(resource_value(&n, &c, "limits.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(resource_value(&n, &c, "limits.memory", None).unwrap(), "67108864");
        assert_eq!(resource_value(&n, &c, "requests.cpu", Some("1m")).unwrap(), "250");
        // requests.memory falls back to the limit.
        assert_eq!(resource_value(&n, &c, "requests.memory", Some("1Mi")).unwrap(), "64");
        // A zero divisor counts as 1.
        assert_eq!(resource_value(&n, &c, "limits.cpu", Some("0")).unwrap(), "1");

        let bare = container(json!({"name": "m"}));
        assert_eq!(resource_value(&n, &bare, "limits.cpu", None).unwrap(), "4");
        assert_eq!(resource_value(&n, &bare, "limits.memory", Some("1Gi")).unwrap(), "8");
        assert_eq!(resource_value(&n, &bare, "requests.cpu", None).unwrap(), "0");
        assert_eq!(
            resource_value(&n, &bare, "limits.ephemeral-storage", None).unwrap(),
            "0"
        );
        assert_eq!(
            resource_value(&n, &bare, "cpu", None).unwrap_err(),
            "unsupported resource cpu"
        );
        assert_eq!(
            resource_value(&n, &bare, "claims.cpu", None).unwrap_err(),
            "unsupported resource claims.cpu"
        );
        let bad = container(json!({"name": "m", "resources": {"limits": {"cpu": "lots"}}}));
        assert_eq!(
            resource_value(&n, &bad, "limits.cpu", None).unwrap_err(),
            "bad quantity lots"
        );
    }

    #[test]
    fn field_values() {
        let n = node();
        let p = test_pod();
        let f = |path: &str| field_value(&n, &p, path);
        assert_eq!(f("metadata.name").unwrap(), "p1");
        assert_eq!(f("metadata.namespace").unwrap(), "ns1");
        assert_eq!(f("metadata.uid").unwrap(), "u-1");
        assert_eq!(f("spec.nodeName").unwrap(), "mb-pod-runner");
        assert_eq!(f("spec.serviceAccountName").unwrap(), "default");
        assert_eq!(f("status.podIP").unwrap(), "127.0.0.1");
        assert_eq!(f("status.hostIPs").unwrap(), "127.0.0.1");
        assert_eq!(f("metadata.labels['app']").unwrap(), "web");
        assert_eq!(f("metadata.labels['missing']").unwrap(), "");
        assert_eq!(f("metadata.annotations['a/b']").unwrap(), "x y");
        assert_eq!(
            f("spec.containers").unwrap_err(),
            "unsupported fieldRef fieldPath spec.containers"
        );
    }

    #[tokio::test]
    async fn env_precedence_base_env_from_then_env() {
        let mut s = Fixed::default()
            .with(SourceKind::ConfigMap, "cm", &[("color", "blue"), ("HOME", "/cm")])
            .with(SourceKind::Secret, "sec", &[("color", "red"), ("password", "pw")]);
        let e = build(
            &mut s,
            json!({"name": "main",
            "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "sec"}, "prefix": "S_"},
                        {"prefix": "IGNORED_"}],
            "env": [
                {"name": "color", "value": "green"},
                {"name": "GREETING", "value": "$(color)-$(S_password)-$(LATER)"},
                {"name": "LATER", "value": "late"},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "C2", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "color"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "EMPTY", "valueFrom": {}},
                {"name": "PATH", "value": "$(PATH):/extra"}
            ]}),
        )
        .await
        .unwrap();
        assert_eq!(
            e,
            env(&[
                ("PATH", "/bin:/extra"),
                ("HOME", "/cm"),
                ("color", "green"),
                ("S_color", "red"),
                ("S_password", "pw"),
                ("GREETING", "green-pw-$(LATER)"),
                ("LATER", "late"),
                ("PW", "pw"),
                ("C2", "blue"),
                ("POD", "p1"),
                ("CPU", "4"),
                ("EMPTY", ""),
            ])
        );
        // Each object is asked for every time it is referenced; ApiSources caches.
        assert_eq!(s.asked, ["configmap/cm", "secret/sec", "secret/sec", "configmap/cm"]);
    }

    #[tokio::test]
    async fn optional_sources_and_keys_are_skipped() {
        let mut s = Fixed::default().with(SourceKind::Secret, "sec", &[("a", "1")]);
        let e = build(
            &mut s,
            json!({"name": "main",
            "envFrom": [{"secretRef": {"name": "absent", "optional": true}},
                        {"configMapRef": {"name": "absent-cm", "optional": true}}],
            "env": [
                {"name": "M1", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": true}}},
                {"name": "M2", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nokey", "optional": true}}},
                {"name": "M3", "valueFrom": {"configMapKeyRef": {"name": "absent-cm", "key": "x", "optional": true}}},
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "a"}}}
            ]}),
        )
        .await
        .unwrap();
        assert_eq!(e, env(&[("PATH", "/bin"), ("HOME", "/pod"), ("A", "1")]));
    }

    #[tokio::test]
    async fn required_sources_fail_with_kubelet_messages() {
        let cases = [
            (
                json!({"envFrom": [{"secretRef": {"name": "nope"}}]}),
                "secret \"nope\" not found",
            ),
            (
                json!({"envFrom": [{"configMapRef": {"name": "nope"}}]}),
                "configmap \"nope\" not found",
            ),
            (
                json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]}),
                "secret \"nope\" not found",
            ),
            (
                json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}}]}),
                "couldn't find key k in Secret ns1/sec",
            ),
            (
                json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}),
                "configmap \"nope\" not found",
            ),
            (
                json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}),
                "couldn't find key k in ConfigMap ns1/cm",
            ),
            (
                json!({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]}),
                "unsupported fieldRef fieldPath status.phase",
            ),
        ];
        for (mut c, want) in cases {
            c["name"] = json!("main");
            let mut s = Fixed::default().with(SourceKind::Secret, "sec", &[("a", "1")]).with(
                SourceKind::ConfigMap,
                "cm",
                &[("a", "1")],
            );
            assert_eq!(build(&mut s, c.clone()).await.unwrap_err(), want, "{c}");
        }
    }

    #[tokio::test]
    async fn first_problem_stops_the_lookups() {
        let mut s = Fixed {
            broken: Some("flaky".into()),
            ..Default::default()
        };
        let err = build(
            &mut s,
            json!({"name": "main", "envFrom": [{"secretRef": {"name": "missing"}}, {"secretRef": {"name": "flaky"}}]}),
        )
        .await
        .unwrap_err();
        assert_eq!(err, "secret \"missing\" not found");
        assert_eq!(s.asked, ["secret/missing"]);
        let err = build(
            &mut s,
            json!({"name": "main", "envFrom": [{"configMapRef": {"name": "flaky"}}]}),
        )
        .await
        .unwrap_err();
        assert_eq!(err, "getting configmap ns1/flaky: boom");
    }

    #[test]
    fn secret_data_then_string_data() {
        let s: Secret = serde_json::from_value(json!({
            "data": {"a": "MQ==", "b": "Mg=="}, "stringData": {"b": "override"}}))
        .unwrap();
        assert_eq!(secret_data(&s), env(&[("a", "1"), ("b", "2"), ("b", "override")]));
        let c: ConfigMap = serde_json::from_value(json!({
            "data": {"x": "1"}, "binaryData": {"y": "Mg=="}}))
        .unwrap();
        assert_eq!(config_map_data(&c), env(&[("x", "1"), ("y", "2")]));
    }
}
