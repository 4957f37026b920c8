//! The shipped chaos scenarios (`examples/chaos/`), each run by the real
//! binary as a user would (`levee chaos run`, on free ports), one after
//! another in a test binary of its own so that no other test shares the
//! machine with them; and `levee chaos run`'s answers to a scenario that is
//! invalid or whose SLOs cannot hold.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/chaos")
}

/// Runs `levee chaos run` on `scenario` with free ports, a report into
/// `report`, and a generous deadline.
fn chaos_run(scenario: &Path, report: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["chaos", "run"])
        .arg(scenario)
        .arg("--ephemeral-ports")
        .arg("--report")
        .arg(report)
        .env("LEVEE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("levee starts");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{}: no end within 240 s", scenario.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_shipped_scenario_passes_and_reports() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples())
        .expect("examples/chaos")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    for file in files {
        let dir = tempfile::tempdir().expect("dir");
        let started = Instant::now();
        let out = chaos_run(&file, dir.path());
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        println!(
            "{}: {:.1} s\n{stdout}",
            file.display(),
            started.elapsed().as_secs_f64()
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}:\n{stdout}\n{stderr}",
            file.display()
        );
        assert!(stdout.contains("PASS") && !stdout.contains("FAIL"), "{stdout}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).expect("report.json"))
                .expect("report.json parses");
        assert!(json.is_object(), "{json}");
        let junit = std::fs::read_to_string(dir.path().join("junit.xml")).expect("junit.xml");
        assert!(
            junit.contains("<testsuite") && junit.contains("<testcase"),
            "{junit}"
        );
        let html = std::fs::read_to_string(dir.path().join("report.html")).expect("report.html");
        assert!(html.contains("<svg"), "the report has its timeline");
    }
}

#[test]
fn an_slo_that_cannot_hold_exits_1_and_says_which() {
    let dir = tempfile::tempdir().expect("dir");
    let scenario = dir.path().join("slow.toml");
    std::fs::write(
        &scenario,
        "[scenario]\nname = \"too-strict\"\nseed = 1\nduration = \"4s\"\n\n[target]\ndemo = true\n\n\
         [load]\nrate = 20\nmethods = { GET = 1.0 }\n\n\
         [[fault]]\nat = \"1s\"\naction = \"latency\"\ndelay = \"300ms\"\nregion = \"primary\"\n\n\
         [slo]\np99 = \"100ms\"\nsuccess_ratio = 1.0\n",
    )
    .expect("write");
    let out = chaos_run(&scenario, &dir.path().join("report"));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", text(&out.stderr));
    let p99 = stdout.lines().find(|l| l.starts_with("p99 ")).unwrap_or_default();
    assert!(p99.contains("FAIL"), "{stdout}");
    let success = stdout
        .lines()
        .find(|l| l.starts_with("success_ratio "))
        .unwrap_or_default();
    assert!(success.contains("PASS"), "only the latency SLO fails: {stdout}");
}

#[test]
fn ctrl_c_ends_a_run_early_and_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let scenario = dir.path().join("long.toml");
    std::fs::write(
        &scenario,
        "[scenario]\nname = \"long\"\nduration = \"120s\"\n\n[target]\ndemo = true\n\n[load]\nrate = 20\n",
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["chaos", "run"])
        .arg(&scenario)
        .arg("--ephemeral-ports")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("levee starts");
    // Progress lines mean the load is running.
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("a progress line");
    assert!(line.contains("req/s"), "{line}");
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().expect("kill");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no end within 60 s of SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130));
}

#[test]
fn an_invalid_scenario_exits_78_naming_every_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let scenario = dir.path().join("bad.toml");
    std::fs::write(
        &scenario,
        "[scenario]\nname = \"bad\"\nduration = \"soon\"\n\n[target]\ndemo = true\n\n\
         [load]\nrate = 0\n\n[[fault]]\nat = \"1s\"\naction = \"explode\"\n\n[slo]\np99 = 5\n",
    )
    .expect("write");
    let out = chaos_run(&scenario, &dir.path().join("report"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for path in ["scenario.duration", "load.rate", "fault[0].action", "slo.p99"] {
        assert!(stderr.contains(path), "missing {path}: {stderr}");
    }
    assert!(!dir.path().join("report").exists(), "nothing ran");
}
