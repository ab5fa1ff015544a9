//! What the client and the tools print when nobody reads it any more: a
//! stdout whose reader has gone ends the command quietly (exit 0, no
//! panic), as `kvs export | head -n 1` needs.

mod common;

use std::process::{Command, Output, Stdio};

use common::{call, TestNode};

/// Runs kvs with `args` and a stdout pipe whose read end is already
/// closed, so the first write fails with EPIPE.
fn with_closed_stdout(args: &[&str], env: &[(&str, &str)]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run kvs")
}

fn assert_quiet_end(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: exit status {:?}, stderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
}

#[test]
fn a_closed_stdout_ends_client_commands_and_tools_quietly() {
    let node = TestNode::start(&[]);
    for i in 0..50 {
        let r = call(&node.addr, "PUT", &format!("/kv/p/k{i:03}"), b"{\"n\":1}");
        assert_eq!(r.status, 200);
    }
    let addr = [("KVS_ADDR", node.addr.as_str())];
    for args in [
        &["export"][..],
        &["ls", "p/"],
        &["get", "p/k001"],
        &["members"],
        &["--help"],
        &["--version"],
    ] {
        assert_quiet_end(&args.join(" "), &with_closed_stdout(args, &addr));
    }

    // An offline tool on a directory of its own.
    let dir = std::env::temp_dir().join(format!("kvs-output-test-{}", fastrand::u64(..)));
    let d = dir.to_str().unwrap();
    let load = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["load", d, "--count", "10"])
        .output()
        .unwrap();
    assert!(load.status.success(), "{load:?}");
    assert_quiet_end("verify", &with_closed_stdout(&["verify", d], &[]));
    assert_quiet_end(
        "test-conflict",
        &with_closed_stdout(&["test-conflict", d, &format!("{d}-b")], &[]),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(format!("{d}-b"));
}

#[test]
fn other_write_errors_are_reported_with_exit_2() {
    // /dev/full fails every write with ENOSPC.
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .arg("--version")
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("stdout"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
