//! Checks the poller's and the edge's own tests run against their real
//! binaries (feature `test-support`, for dev-dependencies only): bad flags
//! stop start-up naming the flag, and SIGTERM and SIGINT both end the
//! process cleanly with its last log line. Also the scratch files that
//! tests of file-reading flags write.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// A directory of one test's own under the system's temp dir, made if
/// missing: `test` and the process id keep tests and parallel runs apart.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `contents` to `name` in `dir` and returns its path.
pub fn scratch_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// `bin` with an empty environment (flags only) logging at `info`.
pub fn command(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear().env("RUST_LOG", "info");
    cmd
}

/// Each `(args, flag)`: the binary refuses to start and its error names
/// `flag`.
pub fn refuses_naming_the_flag(cmd: impl Fn() -> Command, cases: &[(&[&str], &str)]) {
    for (args, flag) in cases {
        let out = cmd().args(*args).output().unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

/// Started with `args` (it must print `listening` once it serves), the
/// binary exits with success on SIGTERM and on SIGINT within 10 s, its last
/// lines including `stopped`.
pub fn stops_gracefully_on_sigterm_and_sigint(
    cmd: impl Fn() -> Command,
    args: &[&str],
    listening: &str,
    stopped: &str,
) {
    for signal in ["TERM", "INT"] {
        let mut child = cmd().args(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.by_ref().map_while(Result::ok).any(|l| l.contains(listening)),
            "never said {listening:?}"
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
        assert!(rest.iter().any(|l| l.contains(stopped)), "SIG{signal}: {rest:?}");
    }
}
