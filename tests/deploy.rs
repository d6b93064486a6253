//! The deployment files, checked without a cluster: the Kubernetes manifests
//! in `deploy/k8s` parse and fit together (Services and the pods they select,
//! ports, probes, the edge's address of the pollers, shutdown timing, scrape
//! annotations), every flag and variable they give the binaries goes through
//! the binaries' own parsers, the probes get healthy answers from real
//! servers started with the manifests' flags, and the Dockerfile builds both
//! images.

use clap::{CommandFactory, Parser};
use livepush::telemetry::LogFormat;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

const POLLER: &str = "livepush-poller";
const EDGE: &str = "livepush-edge";

/// What `fieldRef`s resolve to in a running pod (pod names are at most 63
/// characters of `[a-z0-9-]`).
const SAMPLE_POD_NAME: &str = "livepush-edge-7c9d5b8f6d-x2k4q";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/k8s")
}

/// Every document of the resources listed in `kustomization.yaml`.
struct Manifests {
    docs: Vec<Value>,
    kustomization: Value,
}

impl Manifests {
    fn load() -> Self {
        let dir = k8s_dir();
        let kustomization = parse_one(&dir.join("kustomization.yaml"));
        let listed: BTreeSet<String> = kustomization["resources"]
            .as_array()
            .expect("kustomization.yaml: resources")
            .iter()
            .map(|r| r.as_str().expect("resources are file names").to_owned())
            .collect();
        let present: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| (f.ends_with(".yaml") || f.ends_with(".yml")) && f != "kustomization.yaml")
            .collect();
        assert_eq!(listed, present, "kustomization.yaml must list exactly the manifests in {dir:?}");

        let mut docs = Vec::new();
        let mut seen = BTreeSet::new();
        for file in &listed {
            for doc in parse_all(&dir.join(file)) {
                let what = |field: &str| -> String {
                    doc.pointer(field)
                        .and_then(Value::as_str)
                        .unwrap_or_else(|| panic!("{file}: a document without {field}: {doc}"))
                        .to_owned()
                };
                let (kind, name) = (what("/kind"), what("/metadata/name"));
                what("/apiVersion");
                assert!(seen.insert((kind.clone(), name.clone())), "{file}: {kind}/{name} twice");
                // Kubernetes refuses anything but strings in these maps (an
                // unquoted `"true"` or port number is a common slip).
                for map in [
                    "/metadata/labels",
                    "/metadata/annotations",
                    "/spec/template/metadata/labels",
                    "/spec/template/metadata/annotations",
                    "/data",
                ] {
                    for (k, v) in doc.pointer(map).and_then(Value::as_object).into_iter().flatten() {
                        assert!(v.is_string(), "{file}: {kind}/{name}{map}/{k} must be a string, is {v}");
                    }
                }
                docs.push(doc);
            }
        }
        Manifests { docs, kustomization }
    }

    /// `deploy/k8s-tls`: the base with the overlay's JSON patches applied,
    /// plus the `livepush-poller-tls` Secret its README line has the user
    /// create (here with a certificate made for `livepush-poller`).
    fn load_tls_overlay() -> Self {
        let mut m = Self::load();
        let overlay = parse_one(&repo().join("deploy/k8s-tls/kustomization.yaml"));
        assert_eq!(overlay["resources"], serde_json::json!(["../k8s"]));
        for patch in overlay["patches"].as_array().expect("patches") {
            let (kind, name) =
                (patch["target"]["kind"].as_str().unwrap(), patch["target"]["name"].as_str().unwrap());
            let ops: Value =
                serde_yaml_ng::from_str(patch["patch"].as_str().unwrap()).expect("a JSON patch in YAML");
            let doc = m
                .docs
                .iter_mut()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .expect("target");
            for op in ops.as_array().unwrap() {
                let path = op["path"].as_str().unwrap();
                match op["op"].as_str().unwrap() {
                    "add" => {
                        let parent = path.strip_suffix("/-").expect("this overlay only appends");
                        let list = doc.pointer_mut(parent).unwrap_or_else(|| panic!("{name}: no {parent}"));
                        list.as_array_mut()
                            .unwrap_or_else(|| panic!("{name}: {parent} is no list"))
                            .push(op["value"].clone());
                    }
                    "replace" => {
                        let old = doc.pointer_mut(path).unwrap_or_else(|| panic!("{name}: no {path}"));
                        // The patch names a list index: make sure it still
                        // points at the flag it means to replace.
                        let flag = op["value"].as_str().unwrap().split('=').next().unwrap();
                        assert!(
                            old.as_str().unwrap().starts_with(flag),
                            "{name}: {path} is {old}, not {flag}"
                        );
                        *old = op["value"].clone();
                    }
                    other => panic!("unsupported op {other}"),
                }
            }
        }
        let ca = livepush_tests::tls_media::TestCa::new("livepush poller CA");
        let leaf = ca.leaf(&["livepush-poller"], livepush_tests::tls_media::Validity::Valid);
        m.docs.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "livepush-poller-tls"},
            "stringData": {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.ca_pem()},
        }));
        m
    }

    fn find(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/k8s"))
    }

    fn poller(&self) -> Pod<'_> {
        self.pod(POLLER, "poller", "POLLER_", poller::Config::command())
    }

    fn edge(&self) -> Pod<'_> {
        self.pod(EDGE, "edge", "EDGE_", edge::Config::command())
    }

    /// The container `binary` of Deployment `deployment`, with the command
    /// line it runs: the image's entry point, `args` with `$(VAR)` expanded,
    /// then every variable the binary reads turned into its flag.
    fn pod(&self, deployment: &str, binary: &'static str, prefix: &str, command: clap::Command) -> Pod<'_> {
        let deployment = self.find("Deployment", deployment);
        let spec = &deployment["spec"]["template"]["spec"];
        let container = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == binary)
            .unwrap_or_else(|| panic!("no container named {binary} in {deployment}"));
        assert!(
            container.get("command").is_none(),
            "{binary}: `command` would replace the image's entry point"
        );

        let mut env = self.env(container);
        self.mount_secrets(binary, spec, container, &mut env);
        let mut argv = vec![binary.to_owned()];
        for arg in container["args"].as_array().into_iter().flatten() {
            let arg = arg.as_str().unwrap_or_else(|| panic!("{binary}: args must be strings: {arg}"));
            argv.push(expand(arg, &env));
        }
        for (name, value) in &env {
            let flag = command.get_arguments().find(|a| a.get_env().is_some_and(|e| e == name.as_str()));
            let Some(flag) = flag else {
                assert!(!name.starts_with(prefix), "{binary}: no flag reads ${name}, so it would be ignored");
                continue;
            };
            let long = flag.get_long().expect("flags read from the environment have a long name");
            assert!(
                flag_values(&argv, long).is_empty(),
                "{binary}: --{long} is set both as an argument and through ${name}"
            );
            argv.push(format!("--{long}={value}"));
        }
        Pod { binary, spec, container, argv }
    }

    /// Writes the files of every Secret volume the container mounts into a
    /// temporary directory, as the kubelet would, and points variables that
    /// name a path under a mount there (flags such as
    /// `--media-headers-file` read their file when parsed).
    fn mount_secrets(
        &self,
        binary: &str,
        spec: &Value,
        container: &Value,
        env: &mut BTreeMap<String, String>,
    ) {
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let (name, path) = (mount["name"].as_str().unwrap(), mount["mountPath"].as_str().unwrap());
            let volume = spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{binary}: mounts {name}, which is no volume of the pod"));
            let secret =
                volume["secret"]["secretName"].as_str().unwrap_or_else(|| panic!("{binary}: {volume}"));
            let secret = self.find("Secret", secret);
            // A directory per call: tests run side by side in this process,
            // and one rewriting a file another is parsing would hand it an
            // empty file.
            static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("livepush-deploy-{}-{call}-{binary}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            for (file, text) in secret["stringData"].as_object().into_iter().flatten() {
                std::fs::write(dir.join(file), text.as_str().unwrap()).unwrap();
            }
            for value in env.values_mut() {
                if let Some(rest) = value.strip_prefix(path) {
                    *value = format!("{}{rest}", dir.display());
                }
            }
        }
    }

    /// The container's environment, as the kubelet would set it.
    fn env(&self, container: &Value) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for from in container["envFrom"].as_array().into_iter().flatten() {
            let name =
                from["configMapRef"]["name"].as_str().unwrap_or_else(|| panic!("unsupported envFrom {from}"));
            let prefix = from["prefix"].as_str().unwrap_or_default();
            for (k, v) in self.find("ConfigMap", name)["data"].as_object().into_iter().flatten() {
                env.insert(format!("{prefix}{k}"), v.as_str().unwrap().to_owned());
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap_or_else(|| panic!("env without a name: {var}")).to_owned();
            let value = if let Some(v) = var.get("value") {
                v.as_str().unwrap_or_else(|| panic!("env {name}: value must be a string, is {v}")).to_owned()
            } else if let Some(r) = var.pointer("/valueFrom/configMapKeyRef") {
                let (map, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
                self.find("ConfigMap", map)["data"][key]
                    .as_str()
                    .unwrap_or_else(|| panic!("env {name}: ConfigMap {map} has no key {key}"))
                    .to_owned()
            } else if let Some(path) = var.pointer("/valueFrom/fieldRef/fieldPath") {
                match path.as_str().unwrap() {
                    "metadata.name" => SAMPLE_POD_NAME.to_owned(),
                    "metadata.namespace" => "default".to_owned(),
                    "status.podIP" => "10.1.2.3".to_owned(),
                    other => panic!("env {name}: no sample value for fieldRef {other}"),
                }
            } else {
                panic!("env {name}: unsupported source {var}");
            };
            env.insert(name, value);
        }
        env
    }
}

/// One binary's container in its Deployment.
struct Pod<'a> {
    binary: &'static str,
    /// The pod template's spec.
    spec: &'a Value,
    container: &'a Value,
    /// The command line the container runs, environment folded in as flags.
    argv: Vec<String>,
}

impl Pod<'_> {
    fn poller_config(&self) -> poller::Config {
        poller::Config::try_parse_from(&self.argv)
            .unwrap_or_else(|e| panic!("the poller refuses its manifest's flags {:?}:\n{e}", self.argv))
    }

    fn edge_config(&self) -> edge::Config {
        edge::Config::try_parse_from(&self.argv)
            .unwrap_or_else(|e| panic!("the edge refuses its manifest's flags {:?}:\n{e}", self.argv))
    }

    /// A port as probes and Services name it (a number or a port name),
    /// resolved against this container.
    fn port(&self, port: &Value) -> u16 {
        let n = match port {
            Value::String(name) => self.container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name.as_str())
                .unwrap_or_else(|| panic!("{}: no container port named {name}", self.binary))["containerPort"]
                .as_u64(),
            other => other.as_u64(),
        };
        n.and_then(|n| u16::try_from(n).ok()).unwrap_or_else(|| panic!("{}: bad port {port}", self.binary))
    }

    /// `lifecycle.preStop.sleep.seconds`, required.
    fn pre_stop(&self) -> Duration {
        let s = self.container.pointer("/lifecycle/preStop/sleep/seconds").and_then(Value::as_u64);
        Duration::from_secs(s.unwrap_or_else(|| panic!("{}: no preStop sleep", self.binary)))
    }

    fn grace_period(&self) -> Duration {
        // Kubernetes' default when unset.
        Duration::from_secs(self.spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30))
    }

    fn annotation(&self, deployment: &Value, key: &str) -> String {
        deployment["spec"]["template"]["metadata"]["annotations"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no pod annotation {key}", self.binary))
            .to_owned()
    }
}

fn parse_all(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{path:?}, document {}: {e}", i + 1))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn parse_one(path: &Path) -> Value {
    let mut docs = parse_all(path);
    assert_eq!(docs.len(), 1, "{path:?}: one document");
    docs.remove(0)
}

/// `$(NAME)` replaced by the variable's value, as the kubelet does in args.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    env.iter().fold(arg.to_owned(), |arg, (k, v)| arg.replace(&format!("$({k})"), v))
}

/// The values given to `--flag` (as `--flag=v` or `--flag v`), commas split.
fn flag_values(argv: &[String], flag: &str) -> Vec<String> {
    let long = format!("--{flag}");
    let mut values = Vec::new();
    let mut args = argv.iter();
    while let Some(arg) = args.next() {
        if *arg == long {
            values.extend(args.next().cloned());
        } else if let Some(v) = arg.strip_prefix(&long).and_then(|v| v.strip_prefix('=')) {
            values.push(v.to_owned());
        }
    }
    values.iter().flat_map(|v| v.split(',')).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect()
}

/// `argv` without `--flag` and its value, in either form.
fn without_flag(argv: &[String], flag: &str) -> Vec<String> {
    let long = format!("--{flag}");
    let mut kept = Vec::new();
    let mut args = argv.iter();
    while let Some(arg) = args.next() {
        if *arg == long {
            args.next();
        } else if !arg.strip_prefix(&long).is_some_and(|v| v.starts_with('=')) {
            kept.push(arg.clone());
        }
    }
    kept
}

fn labels(v: &Value) -> &Map<String, Value> {
    v.as_object().unwrap_or_else(|| panic!("not a label map: {v}"))
}

fn selects(selector: &Map<String, Value>, labels: &Map<String, Value>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn manifests_parse_and_hold_every_piece() {
    let m = Manifests::load();
    for (kind, name) in [
        ("ConfigMap", POLLER),
        ("Service", POLLER),
        ("Deployment", POLLER),
        ("PodDisruptionBudget", POLLER),
        ("Service", EDGE),
        ("Deployment", EDGE),
        ("PodDisruptionBudget", EDGE),
    ] {
        m.find(kind, name);
    }
    for name in [POLLER, EDGE] {
        let replicas = m.find("Deployment", name)["spec"]["replicas"].as_u64().unwrap_or(1);
        assert!(replicas >= 2, "{name}: {replicas} replica(s) is no cluster");
    }
    // An image entry that names no container is silently ignored by kustomize.
    let images: BTreeSet<&str> = m
        .docs
        .iter()
        .filter_map(|d| d.pointer("/spec/template/spec/containers")?.as_array())
        .flatten()
        .filter_map(|c| c["image"].as_str()?.split([':', '@']).next())
        .collect();
    for image in m.kustomization["images"].as_array().into_iter().flatten() {
        let name = image["name"].as_str().unwrap();
        assert!(images.contains(name), "kustomization.yaml sets image {name}, which no container uses");
    }
}

#[test]
fn only_edges_and_labelled_clients_reach_the_pollers() {
    let m = Manifests::load();
    let policy = m.find("NetworkPolicy", POLLER);
    let spec = &policy["spec"];
    let pollers = labels(&m.find("Deployment", POLLER)["spec"]["template"]["metadata"]["labels"]);
    let edges = labels(&m.find("Deployment", EDGE)["spec"]["template"]["metadata"]["labels"]);
    assert!(
        selects(labels(&spec["podSelector"]["matchLabels"]), pollers),
        "the policy must select the pollers"
    );
    assert!(
        !selects(labels(&spec["podSelector"]["matchLabels"]), edges),
        "the policy must not select the edges"
    );
    assert!(spec["policyTypes"].as_array().unwrap().iter().any(|t| t == "Ingress"));
    let rules = spec["ingress"].as_array().expect("ingress rules");
    assert_eq!(rules.len(), 1, "one rule: who, and on which port");
    let from: Vec<&Map<String, Value>> = rules[0]["from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| labels(&f["podSelector"]["matchLabels"]))
        .collect();
    assert!(from.iter().any(|s| selects(s, edges)), "the edges may reach the pollers");
    assert!(!from.iter().any(|s| selects(s, pollers)), "pollers need not reach each other");
    let client = serde_json::json!({"livepush.io/poller-client": "true"});
    assert!(from.iter().any(|s| selects(s, labels(&client))), "labelled clients may reach the pollers");
    let ports: Vec<u64> =
        rules[0]["ports"].as_array().unwrap().iter().filter_map(|p| p["port"].as_u64()).collect();
    let config = m.poller().poller_config();
    let serving: Vec<u64> =
        [Some(config.listen), config.admin_listen].into_iter().flatten().map(|a| a.port() as u64).collect();
    assert_eq!(ports, serving, "only the poller's ports (gRPC, then admin)");
}

#[test]
fn the_edges_token_is_one_the_pollers_accept_as_an_edge() {
    let m = Manifests::load();
    let secret = &m.find("Secret", "livepush-grpc-tokens")["stringData"];
    let edge_token = secret["edge-token"].as_str().expect("edge-token").trim();
    assert!(livepush::bearer::is_valid(edge_token), "{edge_token:?}");
    let clients = secret["clients"].as_str().expect("clients");
    let roles: Vec<(&str, &str)> = clients
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0], f[1])
        })
        .collect();
    assert!(roles.contains(&(edge_token, "edge")), "the edge token must have role edge: {roles:?}");
    // Both binaries are pointed at those files (through the mounts).
    assert!(m.poller().poller_config().clients_file.is_some(), "the pollers check tokens");
    assert!(m.edge().edge_config().poller_token_file.is_some(), "the edges present theirs");
}

#[test]
fn the_tls_overlay_gives_pollers_a_certificate_and_edges_its_ca() {
    let m = Manifests::load_tls_overlay();
    let poller = m.poller().poller_config();
    assert!(poller.tls_cert.is_some() && poller.tls_key.is_some(), "the pollers serve TLS");
    assert!(poller.admin_listen.is_some(), "probes keep a plain admin port");
    let edge = m.edge().edge_config();
    assert!(edge.poller_ca.is_some(), "the edges trust the pollers' CA");
    let targets: Vec<String> = edge.pollers.iter().map(ToString::to_string).collect();
    assert_eq!(targets, ["https://livepush-poller:50051"]);
    // Probes and scraping are untouched: still on the admin ports.
    let base = Manifests::load();
    for name in [POLLER, EDGE] {
        for probe in ["readinessProbe", "livenessProbe"] {
            let container = |m: &Manifests| {
                m.find("Deployment", name)["spec"]["template"]["spec"]["containers"][0][probe].clone()
            };
            assert_eq!(container(&m), container(&base), "{name} {probe}");
        }
    }
}

#[test]
fn services_and_disruption_budgets_select_exactly_their_pods() {
    let m = Manifests::load();
    for (name, other) in [(POLLER, EDGE), (EDGE, POLLER)] {
        let deployment = m.find("Deployment", name);
        let pods = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
        let others = labels(&m.find("Deployment", other)["spec"]["template"]["metadata"]["labels"]);
        for (what, selector) in [
            ("Deployment", &deployment["spec"]["selector"]["matchLabels"]),
            ("Service", &m.find("Service", name)["spec"]["selector"]),
            ("PodDisruptionBudget", &m.find("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]),
        ] {
            let selector = labels(selector);
            assert!(selects(selector, pods), "{what} {name} does not select its pods");
            assert!(!selects(selector, others), "{what} {name} also selects the {other} pods");
        }
    }
}

#[test]
fn every_flag_and_variable_in_the_manifests_is_one_the_binaries_accept() {
    let m = Manifests::load();
    let (poller, edge) = (m.poller(), m.edge());
    let (p, e) = (poller.poller_config(), edge.edge_config());
    assert_eq!(p.log_format, LogFormat::Json, "the poller should log JSON in the cluster");
    assert_eq!(e.log_format, LogFormat::Json, "the edge should log JSON in the cluster");
    // Bound to every interface: loopback would be unreachable from other pods.
    for (binary, listen) in [("poller", p.listen), ("edge", e.listen)] {
        assert!(listen.ip().is_unspecified(), "{binary} listens on {listen}");
        // Without capabilities a non-root process cannot bind below 1024.
        assert!(listen.port() >= 1024, "{binary} listens on {listen}");
    }
}

#[test]
fn the_poller_service_is_headless_on_the_port_the_poller_listens_on() {
    let m = Manifests::load();
    let pod = m.poller();
    let listen = pod.poller_config().listen.port();
    let service = m.find("Service", POLLER);
    // Headless, so each edge resolves every poller pod instead of one
    // virtual IP that would pin all its streams to one poller.
    assert_eq!(service["spec"]["clusterIP"], "None", "the poller Service must be headless");
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    let port = &ports[0];
    assert_eq!(port["name"], "grpc");
    // DNS of a headless Service gives pod addresses: clients dial the
    // Service's port on the pod itself, so all three must agree.
    assert_eq!(port["port"].as_u64(), Some(listen.into()), "Service port vs --listen");
    assert_eq!(pod.port(port.get("targetPort").unwrap_or(&port["port"])), listen, "targetPort vs --listen");
    assert_eq!(pod.port(&"grpc".into()), listen, "containerPort vs --listen");
}

#[test]
fn the_edge_reaches_the_pollers_through_their_service() {
    let m = Manifests::load();
    let edge = m.edge();
    edge.edge_config();
    let port = m.find("Service", POLLER)["spec"]["ports"][0]["port"].as_u64().unwrap();
    let pollers = flag_values(&edge.argv, "poller");
    assert!(!pollers.is_empty(), "the edge is not told where the pollers are");
    for url in pollers {
        let uri: axum::http::Uri = url.parse().unwrap_or_else(|e| panic!("--poller {url}: {e}"));
        assert_eq!(uri.scheme_str(), Some("http"), "--poller {url}");
        let host = uri.host().unwrap_or_default();
        assert!(
            host == POLLER || host.starts_with(&format!("{POLLER}.")),
            "--poller {url} is not the poller Service's DNS name"
        );
        assert_eq!(uri.port_u16().map(u64::from), Some(port), "--poller {url}: not the Service's port");
    }

    let service = m.find("Service", EDGE);
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert!(!ports.is_empty());
    for port in ports {
        let target = port.get("targetPort").unwrap_or(&port["port"]);
        assert_eq!(edge.port(target), edge.edge_config().listen.port(), "edge Service port {port}");
    }
}

#[test]
fn probes_point_at_the_health_endpoints_on_the_serving_ports() {
    let m = Manifests::load();
    let poller = m.poller();
    let config = poller.poller_config();
    // The kubelet's gRPC probes carry no token and speak no TLS: the admin
    // port is where they get an answer.
    let listen = config.admin_listen.unwrap_or(config.listen).port();
    for probe in ["readinessProbe", "livenessProbe"] {
        let grpc = &poller.container[probe]["grpc"];
        assert!(grpc.is_object(), "poller {probe}: not a gRPC probe");
        // gRPC probes take a port number only.
        assert_eq!(grpc["port"].as_u64(), Some(listen.into()), "poller {probe}: port vs --admin-listen");
        assert_eq!(grpc["service"], livepush::proto::live_feed_server::SERVICE_NAME, "poller {probe}");
    }

    let edge = m.edge();
    let admin = edge_admin_port(&edge.edge_config());
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &edge.container[probe]["httpGet"];
        assert_eq!(get["path"], path, "edge {probe}");
        assert_eq!(edge.port(&get["port"]), admin, "edge {probe}: port vs --admin-listen (or --listen)");
    }
}

/// Where the edge serves probes and metrics: `--admin-listen`, else `--listen`.
fn edge_admin_port(config: &edge::Config) -> u16 {
    config.admin_listen.unwrap_or(config.listen).port()
}

/// What the kubelet asks, put to a poller and an edge started with the
/// manifests' flags (the edge pointed at that poller instead of the Service,
/// its admin endpoints on a free loopback port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_get_healthy_answers_from_real_servers() {
    use livepush_tests::{PATIENCE, start_edge, start_poller};
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let m = Manifests::load();
    let (poller_pod, edge_pod) = (m.poller(), m.edge());
    assert!(poller_pod.poller_config().admin_listen.is_some(), "the manifests probe the admin port");
    let poller_admin = livepush_tests::process::free_addr();
    let mut args = without_flag(&poller_pod.argv[1..], "admin-listen");
    args.extend(["--admin-listen".to_owned(), poller_admin.to_string()]);
    let poller = start_poller(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    livepush_tests::process::wait_ok(&format!("http://{poller_admin}/metrics")).await;
    let mut args = without_flag(&without_flag(&edge_pod.argv[1..], "poller"), "admin-listen");
    let admin = livepush_tests::process::free_addr();
    args.extend(["--poller".to_owned(), poller.url(), "--admin-listen".to_owned(), admin.to_string()]);
    assert!(edge_pod.edge_config().admin_listen.is_some(), "the manifests keep probes off the public port");
    let edge = start_edge(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // As the kubelet asks: on the admin port, without a token.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{poller_admin}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for probe in ["readinessProbe", "livenessProbe"] {
        let service = poller_pod.container[probe]["grpc"]["service"].as_str().unwrap().to_owned();
        let status = health.check(HealthCheckRequest { service }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "poller {probe}");
    }

    for probe in ["livenessProbe", "readinessProbe"] {
        let url = format!("http://{admin}{}", edge_pod.container[probe]["httpGet"]["path"].as_str().unwrap());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let status = reqwest::get(&url).await.unwrap().status();
            if status == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "edge {probe}: GET {url} answers {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    edge.stop().await.unwrap();
    poller.stop().await.unwrap();
}

#[test]
fn shutdown_fits_in_the_grace_period() {
    let m = Manifests::load();
    // The kubelet runs preStop, then sends SIGTERM; the whole must end
    // before the grace period or the process is killed mid-drain.
    let poller = m.poller();
    let config = poller.poller_config();
    let needed = poller.pre_stop() + config.shutdown_timeout;
    assert!(
        poller.grace_period() > needed,
        "poller: terminationGracePeriodSeconds {:?} <= preStop + --shutdown-timeout = {needed:?}",
        poller.grace_period()
    );

    let edge = m.edge();
    let config = edge.edge_config();
    let needed = edge.pre_stop() + config.drain_spread + config.shutdown_timeout;
    assert!(
        edge.grace_period() > needed,
        "edge: terminationGracePeriodSeconds {:?} <= preStop + --drain-spread + --shutdown-timeout = {needed:?}",
        edge.grace_period()
    );
}

#[test]
fn prometheus_scrapes_metrics_on_the_serving_ports() {
    let m = Manifests::load();
    let (poller, edge) = (m.poller(), m.edge());
    let poller_config = poller.poller_config();
    let poller_port = poller_config.admin_listen.unwrap_or(poller_config.listen).port();
    for (pod, port) in [(&poller, poller_port), (&edge, edge_admin_port(&edge.edge_config()))] {
        let deployment = m.find("Deployment", &format!("livepush-{}", pod.binary));
        assert_eq!(pod.annotation(deployment, "prometheus.io/scrape"), "true");
        assert_eq!(pod.annotation(deployment, "prometheus.io/port"), port.to_string(), "{}", pod.binary);
        assert_eq!(pod.annotation(deployment, "prometheus.io/path"), "/metrics");
    }
}

#[test]
fn pods_run_without_privileges_and_with_resources() {
    let m = Manifests::load();
    for pod in [m.poller(), m.edge()] {
        let b = pod.binary;
        assert_eq!(pod.spec["securityContext"]["runAsNonRoot"], true, "{b}");
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert_ne!(pod.spec[host], true, "{b}: {host}");
        }
        let sc = &pod.container["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{b}");
        assert_ne!(sc["privileged"], true, "{b}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{b}");
        assert!(sc["capabilities"]["drop"].as_array().is_some_and(|d| d.contains(&"ALL".into())), "{b}");
        assert!(sc["capabilities"]["add"].as_array().is_none_or(Vec::is_empty), "{b}");
        for port in pod.container["ports"].as_array().into_iter().flatten() {
            assert!(port.get("hostPort").is_none(), "{b}: hostPort");
        }
        let res = &pod.container["resources"];
        for field in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
            assert!(res.pointer(field).is_some(), "{b}: no resources{field}");
        }
    }
}

/// One stage of a Dockerfile.
struct Stage {
    /// Its `AS` name, or its image when unnamed.
    name: String,
    /// The image or stage it starts `FROM`.
    from: String,
    /// Instruction (upper case) and the rest, continuation lines joined.
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in joined.into_iter().filter(|l| !l.is_empty()) {
        let (instr, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let (instr, rest) = (instr.to_ascii_uppercase(), rest.trim().to_owned());
        if instr == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => name.to_string(),
                [image] => image.to_string(),
                _ => panic!("Dockerfile: FROM {rest}"),
            };
            stages.push(Stage { name, from: words[0].to_owned(), instructions: Vec::new() });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instr, rest));
        }
    }
    stages
}

#[test]
fn the_dockerfile_builds_both_images_locked_and_non_root() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let stages = dockerfile_stages(&text);
    let stage = |name: &str| stages.iter().find(|s| s.name == name);

    let build = stages
        .iter()
        .flat_map(|s| &s.instructions)
        .find(|(i, rest)| i == "RUN" && rest.contains("cargo build"))
        .expect("Dockerfile: no RUN cargo build");
    for needed in ["--locked", "--release", "-p poller", "-p edge"] {
        assert!(build.1.contains(needed), "Dockerfile: cargo build without {needed}: {}", build.1);
    }

    let m = Manifests::load();
    for (binary, port) in
        [("poller", m.poller().poller_config().listen.port()), ("edge", m.edge().edge_config().listen.port())]
    {
        let instrs =
            &stage(binary).unwrap_or_else(|| panic!("Dockerfile: no stage `AS {binary}`")).instructions;
        let last = |name: &str| instrs.iter().rev().find(|(i, _)| i == name).map(|(_, r)| r.as_str());
        let entry = last("ENTRYPOINT").unwrap_or_else(|| panic!("Dockerfile {binary}: no ENTRYPOINT"));
        assert!(entry.contains(&format!("/{binary}\"")), "Dockerfile {binary}: ENTRYPOINT {entry}");
        let exposed = last("EXPOSE").unwrap_or_default();
        assert!(
            exposed.split_whitespace().any(|p| p == port.to_string()),
            "Dockerfile {binary}: EXPOSE {exposed}"
        );

        // The user of the image: the nearest USER up the chain of stages. It
        // must be numeric for Kubernetes' runAsNonRoot to verify it.
        let mut at = binary.to_owned();
        let user = loop {
            let Stage { from, instructions, .. } =
                stage(&at).unwrap_or_else(|| panic!("Dockerfile {binary}: no USER"));
            if let Some((_, user)) = instructions.iter().rev().find(|(i, _)| i == "USER") {
                break user.clone();
            }
            at = from.clone();
        };
        let uid = user.split(':').next().unwrap().parse::<u32>();
        assert!(uid.is_ok_and(|u| u != 0), "Dockerfile {binary}: USER {user}");
    }

    let ignored = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignored.lines().any(|l| l.trim_end_matches('/') == "target"), ".dockerignore must skip target/");
}
