//! The real `poller` binary: start-up refuses bad flags naming them, SIGTERM
//! and SIGINT both end the process cleanly, and `--log-format json` writes one
//! JSON object per line.

use livepush::cli_checks::{self, scratch_dir, scratch_file};
use std::process::Command;

fn poller() -> Command {
    cli_checks::command(env!("CARGO_BIN_EXE_poller"))
}

#[test]
fn bad_flags_stop_start_up_and_name_the_flag() {
    cli_checks::refuses_naming_the_flag(
        poller,
        &[
            (&["--media-url", "http://m/live"][..], "--media-url"),
            (&["--media-url", "http://{event_id}/x"][..], "--media-url"),
            (&["--interval", "fast"][..], "--interval"),
            (&["--listen", "localhost"][..], "--listen"),
            (&["--media-timeout", "0ms"][..], "--media-timeout"),
            (&["--log-format", "bogus"][..], "--log-format"),
        ],
    );
}

#[test]
fn bad_tls_and_header_files_stop_start_up_naming_the_flag() {
    let dir = scratch_dir("livepush-cli");
    let junk = scratch_file(&dir, "junk.pem", "not a certificate");
    let junk = junk.to_str().unwrap();
    let headers = scratch_file(&dir, "headers", "# ok\nX-Ok: 1\nAuthorization: Bearer s3cr3t\u{7}\n");
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
    let args = ["--listen", "127.0.0.1:0", "--shutdown-timeout", "5s"];
    cli_checks::stops_gracefully_on_sigterm_and_sigint(poller, &args, "poller listening", "poller stopped");
}
