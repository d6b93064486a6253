//! The ops pack against the real tools: Debian's `promtool` checks and
//! unit-tests the alerting rules, and a real Prometheus scrapes a running
//! poller and edge, loads the rules, and answers every query of the Grafana
//! dashboard, with a series for every metric the dashboard and the rules
//! name (so a renamed metric breaks this test, not an operator's night).
//!
//! Prometheus and promtool come from Debian's `prometheus` package, which
//! `.ci/run` installs; elsewhere a missing tool prints SKIPPED, under CI it
//! fails.

use livepush_tests::{
    PATIENCE, TestMedia, http,
    process::{Process, free_addr, wait_ok},
    sse::SseClient,
};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};
use tokio::time::Instant;

const POLLER: &str = env!("CARGO_BIN_EXE_livepush-test-poller");
const EDGE: &str = env!("CARGO_BIN_EXE_livepush-test-edge");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy")
}

/// Whether `tool` is installed; under CI its absence fails the test.
fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the ops tests: install Debian's prometheus (.ci/run does)"
        );
        eprintln!("SKIPPED: {tool} missing (apt-get install prometheus)");
    }
    found
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy().join("grafana/livepush-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<String> = panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| t["expr"].as_str().expect("every target has an expr").to_owned())
        .collect();
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    exprs
}

/// Every rule expression of the rules file.
fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("prometheus/livepush.rules.yml")).unwrap();
    let rules: Value = serde_yaml_ng::from_str(&text).expect("the rules are YAML");
    let groups = rules["groups"].as_array().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter().map(|r| r["expr"].as_str().unwrap().to_owned()))
        .collect()
}

/// The metric names an expression reads (histograms by their `_bucket`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = |p: &str| {
            expr[i..].starts_with(p)
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        };
        if starts("livepush_") || starts("process_") || starts("up{") {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            names.insert(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_dashboard_is_importable_and_uses_a_datasource_variable() {
    let d = dashboard();
    assert_eq!(d["uid"], "livepush");
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus")
    );
    for panel in d["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        for t in panel["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        }
    }
    let titles: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), 7, "{titles:?}");
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    if !have("promtool") {
        return;
    }
    let dir = deploy().join("prometheus");
    for args in
        [&["check", "rules", "livepush.rules.yml"][..], &["test", "rules", "livepush.rules.test.yml"][..]]
    {
        let out = Command::new("promtool").args(args).current_dir(&dir).output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

/// A Prometheus on loopback scraping `targets` every second with the rules
/// loaded; killed on drop.
struct Prometheus {
    url: String,
    _child: tokio::process::Child,
    _dir: PathBuf,
}

impl Prometheus {
    async fn start(poller: &str, edge: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("livepush-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = deploy().join("prometheus/livepush.rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: livepush-poller\n    static_configs:\n      - targets: ['{poller}']\n  - job_name: livepush-edge\n    static_configs:\n      - targets: ['{edge}']\n",
            rules = rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = free_addr();
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let url = format!("http://{addr}");
        wait_ok(&format!("{url}/-/ready")).await;
        Self { url, _child: child, _dir: dir }
    }

    /// `GET /api/v1/query`: the status and the result.
    async fn query(&self, expr: &str) -> (String, Vec<Value>) {
        let resp =
            http().get(format!("{}/api/v1/query", self.url)).query(&[("query", expr)]).send().await.unwrap();
        let body: Value = resp.json().await.unwrap();
        let status = body["status"].as_str().unwrap_or_default().to_owned();
        let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
        if status != "success" {
            return (format!("{status}: {}", body["error"]), result);
        }
        (status, result)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_metric_the_dashboard_and_the_rules_use() {
    if !have("prometheus") {
        return;
    }
    // A poller watching one event at most, so a second event is refused and
    // the edge's subscribe-failure series exists too.
    let media = TestMedia::start().await;
    let poller = Process::start(
        POLLER,
        free_addr(),
        &["--media-url", &media.template(), "--interval", "1s", "--max-events", "1"],
    );
    wait_ok(&format!("{}/metrics", poller.url())).await;
    let edge = Process::start(EDGE, free_addr(), &["--poller", &poller.url(), "--heartbeat-interval", "1s"]);
    wait_ok(&format!("{}/readyz", edge.url())).await;
    let mut watching = SseClient::open(&format!("{}/live/ops-a/stream?vid=v1", edge.url())).await;
    watching.next_message().await;
    let mut refused = SseClient::open(&format!("{}/live/ops-b/stream", edge.url())).await;
    assert_eq!(refused.next().await.unwrap().event, "stale");

    let prometheus = Prometheus::start(&poller.addr.to_string(), &edge.addr.to_string()).await;
    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    let rules = rule_exprs();
    let names: BTreeSet<String> = exprs.iter().chain(&rules).flat_map(|e| metric_names(e)).collect();
    assert!(names.len() >= 20, "{names:?}");

    // Every metric named has a series once a few scrapes happened.
    let deadline = Instant::now() + PATIENCE * 3;
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        for name in &names {
            let name = name.trim_end_matches('{');
            let (status, result) = prometheus.query(&format!("count({{__name__=\"{name}\"}})")).await;
            assert_eq!(status, "success");
            if result.is_empty() {
                missing.push(name.to_owned());
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(missing.is_empty(), "no series in Prometheus for {missing:?}");

    // Every dashboard expression parses and evaluates as PromQL (Grafana's
    // $__rate_interval stands for a range of a few scrapes).
    for expr in &exprs {
        let (status, _) = prometheus.query(&expr.replace("$__rate_interval", "1m")).await;
        assert_eq!(status, "success", "{expr}");
    }
    // The rules loaded and evaluate without errors.
    let rules_api: Value =
        http().get(format!("{}/api/v1/rules", prometheus.url)).send().await.unwrap().json().await.unwrap();
    let loaded: Vec<&Value> = rules_api["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), rules.len());
    for rule in loaded {
        assert_ne!(rule["health"], "err", "{rule}");
    }
    // A scrape of each binary is healthy.
    let (_, up) = prometheus.query("up").await;
    assert_eq!(up.len(), 2);
    assert!(up.iter().all(|s| s["value"][1] == "1"), "{up:?}");
}
