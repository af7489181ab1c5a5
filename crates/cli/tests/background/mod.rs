//! A command running in the background while a test sends it signals (`cli_signals`,
//! `cli_mpi`). Every wait is bounded, only to turn a hang into a failure; no test asserts on
//! time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a wait may take before the test calls it a hang (never reached by a working run).
const HANG: Duration = Duration::from_secs(300);

/// A process running in the background; its stderr goes to a file, its stdout nowhere.
pub struct Running {
    child: Child,
    stderr: PathBuf,
}

impl Running {
    /// Starts `command`, its stderr going to a file in `dir`.
    pub fn spawn(mut command: Command, dir: &Path) -> Self {
        let stderr = dir.join("stderr.txt");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting the command");
        Self { child, stderr }
    }

    /// Sends `signal` (`INT`, `TERM`) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// Waits until `condition` holds, failing the test if the process ends first or hangs.
    pub fn wait_until(&mut self, what: &str, condition: impl Fn() -> bool) {
        let started = Instant::now();
        while !condition() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the command ended ({status}) before {what}; stderr:\n{}",
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            if started.elapsed() > HANG {
                self.child.kill().unwrap();
                panic!("the command hung before {what}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end; returns its status and stderr.
    pub fn finish(mut self) -> (ExitStatus, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > HANG {
                self.child.kill().unwrap();
                panic!("the command did not stop after the signal");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, fs::read_to_string(&self.stderr).unwrap())
    }
}
