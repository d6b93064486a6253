//! The real `poller` binary: start-up refuses bad flags naming them, SIGTERM
//! and SIGINT both end the process cleanly, and `--log-format json` writes one
//! JSON object per line.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn poller() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_poller"));
    cmd.env_clear().env("RUST_LOG", "info");
    cmd
}

#[test]
fn bad_flags_stop_start_up_and_name_the_flag() {
    for (args, flag) in [
        (&["--media-url", "http://m/live"][..], "--media-url"),
        (&["--media-url", "http://{event_id}/x"][..], "--media-url"),
        (&["--interval", "fast"][..], "--interval"),
        (&["--listen", "localhost"][..], "--listen"),
        (&["--media-timeout", "0ms"][..], "--media-timeout"),
        (&["--log-format", "bogus"][..], "--log-format"),
    ] {
        let out = poller().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_tls_and_header_files_stop_start_up_naming_the_flag() {
    let dir = std::env::temp_dir().join(format!("livepush-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk = junk.to_str().unwrap();
    let headers = dir.join("headers");
    std::fs::write(&headers, "# ok\nX-Ok: 1\nAuthorization: Bearer s3cr3t\u{7}\n").unwrap();
    let headers = headers.to_str().unwrap();
    for (args, flag, also) in [
        (&["--media-ca", junk][..], "--media-ca", junk),
        (&["--media-ca", "/nonexistent/ca.pem"][..], "--media-ca", "/nonexistent/ca.pem"),
        (&["--media-client-cert", junk, "--media-client-key", junk][..], "--media-client-cert", junk),
        (&["--media-headers-file", headers][..], "--media-headers-file", "line 3"),
        (&["--heartbeat-headers-file", headers][..], "--heartbeat-headers-file", "line 3"),
        (&["--media-header", "X-Key s3cr3t"][..], "--media-header", "Name: value"),
        (&["--heartbeat-header", "X-Key: s3cr3t\u{1}"][..], "--heartbeat-header", "x-key"),
    ] {
        let out = poller().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag) && stderr.contains(also), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cr3t"), "a header value leaked: {stderr}");
    }
}

#[test]
fn environment_variables_are_read_too() {
    let out = poller().env("POLLER_INTERVAL", "never").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--interval"));
}

#[test]
fn sigterm_and_sigint_shut_down_gracefully() {
    for signal in ["TERM", "INT"] {
        let mut child = poller()
            .args(["--listen", "127.0.0.1:0", "--shutdown-timeout", "5s"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.by_ref().map_while(Result::ok).any(|l| l.contains("poller listening")),
            "the poller never said it was listening"
        );
        let kill = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        assert!(kill.unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "SIG{signal}: still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "SIG{signal}: {status}");
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(rest.iter().any(|l| l.contains("poller stopped")), "SIG{signal}: {rest:?}");
    }
}
