//! `aoe-bench` commands that need no network: what they do when their output goes away.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_aoe-bench");

#[test]
fn completions_into_a_closed_pipe_end_quietly() {
    for shell in ["bash", "zsh", "fish"] {
        // Standard output a pipe whose reader is gone before the command starts, as after
        // `| head` has what it wanted.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(["completions", shell])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "aoe-bench completions {shell} | head: {err}"
        );
        assert!(
            err.is_empty(),
            "aoe-bench completions {shell} | head: {err}"
        );
    }
}
