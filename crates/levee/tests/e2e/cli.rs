//! The command line: `check` and `run` exit codes, and the examples.

use std::process::Command;

use crate::support::*;

fn levee(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .env("LEVEE_LOG", "error")
        .output()
        .expect("levee runs")
}

fn examples() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_valid() {
    let files = examples();
    assert!(files.iter().any(|f| f.ends_with("two-regions.toml")), "{files:?}");
    for file in files {
        if let Err(e) = levee_config::load(&file) {
            panic!("{}:\n{e}", file.display());
        }
        let out = levee(&["check", "-c", file.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_reference_topology_is_as_documented() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-regions.toml");
    let c = levee_config::load(&dir).expect("valid");
    assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
    let app = c
        .upstreams
        .iter()
        .find(|u| u.name.as_str() == "app")
        .expect("upstream app");
    let region = |name: &str| {
        app.regions
            .iter()
            .find(|r| r.name.as_str() == name)
            .expect("region")
    };
    let addrs = |name: &str| {
        region(name)
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(region("primary").priority, 0);
    assert_eq!(
        addrs("primary"),
        ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"]
    );
    assert_eq!(region("secondary").priority, 1);
    assert_eq!(addrs("secondary"), ["127.0.0.1:9201", "127.0.0.1:9202"]);
}

#[test]
fn check_reports_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[listener.main]\naddress = \"127.0.0.1:8080\"\n[upstream.api]\nconnect_timeout = \"0s\"\nbalance = \"fastest\"\n[upstream.api.region.a]\nendpoints = [\"nowhere\"]\n",
    )
    .expect("write");
    let out = levee(&["check", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "3 problems",
        "upstream.api.balance: \"fastest\" is not one of",
        "upstream.api.connect_timeout: must be greater than 0",
        "upstream.api.region.a.endpoints[0]: \"nowhere\" is not an address",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn check_of_a_missing_file_exits_78() {
    let out = levee(&["check", "-c", "/nonexistent/levee.toml"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn run_refuses_an_invalid_config_with_78() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[listener.main]\nadress = \"127.0.0.1:8080\"\n").expect("write");
    let out = levee(&["run", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listener.main.adress: unknown field"));
}

#[test]
fn run_exits_1_when_it_cannot_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("levee.toml");
    let toml = simple(&["127.0.0.1:1".parse().expect("addr")]).replace(
        "[listener.main]\naddress = \"127.0.0.1:0\"",
        &format!("[listener.main]\naddress = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&path, toml).expect("write");
    let out = levee(&["run", "--no-watch", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listener.main: cannot listen on"), "{stderr}");
}

#[test]
fn version_and_help() {
    let out = levee(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("levee "));
    let out = levee(&["--help"]);
    for cmd in ["run", "check", "demo"] {
        assert!(String::from_utf8_lossy(&out.stdout).contains(cmd));
    }
}
