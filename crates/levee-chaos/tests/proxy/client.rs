//! A published Toxiproxy client drives the proxy: the `toxiproxy-python`
//! package from PyPI (import name `toxiproxy`), running
//! `tests/toxiproxy_client.py` against a server in this process.
//!
//! It needs that package: `.ci/run` installs it (pinned, from
//! `tests/requirements.txt`) into `target/toxiproxy-venv`, and this test
//! uses that venv's Python, or `$LEVEE_TOXIPROXY_PYTHON`, or `python3`.
//! Without it the test fails and says what to install; it never passes
//! without having run the client.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LEVEE_TOXIPROXY_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = crate_dir().join("../../target/toxiproxy-venv/bin/python3");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

fn install_hint() -> String {
    "install it with:\n  python3 -m venv target/toxiproxy-venv && \
     target/toxiproxy-venv/bin/pip install --no-input -r crates/levee-chaos/tests/requirements.txt\n\
     (from the workspace root; .ci/run does this), or point LEVEE_TOXIPROXY_PYTHON at a Python \
     that has the package"
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_toxiproxy_python_client_drives_it() {
    let python = python();
    let probe = Command::new(&python)
        .args(["-c", "import toxiproxy, requests"])
        .output();
    match probe {
        Err(e) => panic!(
            "cannot run {}: {e}; this test needs python3 with the PyPI package toxiproxy-python; {}",
            python.display(),
            install_hint()
        ),
        Ok(out) if !out.status.success() => panic!(
            "{} cannot import the Toxiproxy client (PyPI package toxiproxy-python): {}\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            install_hint()
        ),
        Ok(_) => {}
    }
    let s = server().await;
    let echo = levee_testkit::Echo::start().await.unwrap();
    let mut child = Command::new(&python)
        .arg(crate_dir().join("tests/toxiproxy_client.py"))
        .arg(s.api.port().to_string())
        .arg(echo.addr().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > SCRIPT_DEADLINE {
            // Our own child, ended by its PID.
            let _ = child.kill();
            let _ = child.wait();
            panic!("the client script did not finish within {SCRIPT_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = child.wait_with_output().expect("output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        status.success(),
        "the client script failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("every check passed"), "{stdout}\n{stderr}");
}
