//! `--log-format json` (flag or environment) on the real binaries: every line
//! up to start-up is one JSON object, and the start-up line has the fields a
//! log collector indexes.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

/// Runs `bin` until it logs `"<name> listening"`; returns its stdout lines.
fn startup_lines(bin: &str, name: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read up to the start-up line, then stop the process before judging, so
    // a failed assertion leaves nothing running.
    let mut lines = Vec::new();
    let startup = format!("{name} listening");
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        let done = line.contains(&startup);
        lines.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    lines
}

#[test]
fn json_logs_are_one_object_per_line() {
    let cases = [
        (env!("CARGO_BIN_EXE_livepush-test-poller"), "poller", &["--log-format", "json"][..], &[][..]),
        (env!("CARGO_BIN_EXE_livepush-test-edge"), "edge", &[][..], &[("EDGE_LOG_FORMAT", "json")][..]),
    ];
    for (bin, name, args, env) in cases {
        let lines = startup_lines(bin, name, args, env);
        let objects: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: not one JSON object ({e}): {l:?}"))
            })
            .collect();
        let listening = objects
            .iter()
            .find(|o| o["fields"]["message"] == format!("{name} listening"))
            .unwrap_or_else(|| panic!("{name}: no start-up line: {lines:?}"));
        assert_eq!(listening["level"], "INFO", "{listening}");
        assert_eq!(listening["target"], name, "{listening}");
        assert!(listening["timestamp"].is_string(), "{listening}");
        let addr = listening["fields"]["addr"].as_str().unwrap_or_default();
        assert!(addr.starts_with("127.0.0.1:"), "{listening}");
    }
}
