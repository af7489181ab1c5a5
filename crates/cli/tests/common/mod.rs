//! What the end-to-end CLI tests share. Every test binary compiles this module and uses a part
//! of it, so the parts one binary leaves unused are not dead code.
#![allow(dead_code)]

use std::process::Output;

use assert_cmd::Command;

/// Runs the `timeprest` binary with `args` and returns what it printed and its status.
pub fn timeprest(args: &[&str]) -> Output {
    Command::cargo_bin("timeprest")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

/// Runs `timeprest args…`, asserts that it succeeded (showing its stderr if not) and returns
/// its stdout.
pub fn succeed(args: &[&str]) -> String {
    let output = timeprest(args);
    assert!(
        output.status.success(),
        "timeprest {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
