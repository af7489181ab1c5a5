//! What the end-to-end CLI tests share.

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
