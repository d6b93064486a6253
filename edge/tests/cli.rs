//! The real `edge` binary: start-up refuses bad flags naming them, SIGTERM and
//! SIGINT both end the process cleanly, and `--log-format json` writes one JSON
//! object per line.

use livepush::cli_checks;
use std::process::Command;

fn edge() -> Command {
    cli_checks::command(env!("CARGO_BIN_EXE_edge"))
}

#[test]
fn bad_flags_stop_start_up_and_name_the_flag() {
    cli_checks::refuses_naming_the_flag(
        edge,
        &[
            (&["--poller", "127.0.0.1:50051"][..], "--poller"),
            (&["--poller", "ftp://x"][..], "--poller"),
            (&["--keepalive", "0s"][..], "--keepalive"),
            (&["--listen", "localhost"][..], "--listen"),
            (&["--retry", "soon"][..], "--retry"),
            (&["--log-format", "bogus"][..], "--log-format"),
        ],
    );
}

#[test]
fn environment_variables_are_read_too() {
    let out = edge().env("EDGE_KEEPALIVE", "never").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keepalive"));
}

#[test]
fn sigterm_and_sigint_shut_down_gracefully() {
    let args = ["--listen", "127.0.0.1:0", "--shutdown-timeout", "5s"];
    cli_checks::stops_gracefully_on_sigterm_and_sigint(edge, &args, "edge listening", "edge stopped");
}
