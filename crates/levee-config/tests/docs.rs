//! Keeps `docs/config.md` honest.
//!
//! - Its first ```toml block, the complete example, is a valid config and
//!   sets every key levee accepts.
//! - Every key of every table is documented, in backticks, under the heading
//!   that names its table.
//! - Every other ```toml block uses only keys levee knows; a block marked as
//!   invalid must be refused with exactly the errors the doc prints after it.
//!
//! The accepted keys are not listed here by hand: each table is given an
//! unknown key, and the error ("unknown field `zz_probe`, expected one of
//! `a`, `b`, ...") names the keys it accepts. A key added to the config
//! without documentation fails these tests.

use std::collections::BTreeSet;
use std::path::PathBuf;

const PROBE: &str = "zz_probe";

/// First line of a ```toml block that shows a config `levee check` refuses.
const INVALID_MARK: &str = "# levee check: invalid";

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fenced code block: its info string, its text and its first line number.
struct Block {
    info: String,
    text: String,
    line: usize,
}

fn fenced_blocks(md: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Block {
                        info: info.trim().to_string(),
                        text: String::new(),
                        line: i + 2,
                    });
                }
            }
            Some(mut b) => {
                if trimmed.starts_with("```") {
                    blocks.push(b);
                } else {
                    b.text.push_str(line);
                    b.text.push('\n');
                    open = Some(b);
                }
            }
        }
    }
    assert!(open.is_none(), "docs/config.md has an unclosed code block");
    blocks
}

fn toml_blocks(md: &str) -> Vec<Block> {
    fenced_blocks(md)
        .into_iter()
        .filter(|b| b.info == "toml")
        .collect()
}

/// One table of the config, how to make it refuse a probe key, and the
/// heading of docs/config.md that documents it.
struct Table {
    /// Where the table sits in the complete example (see [`example_keys`]).
    name: &'static str,
    /// A config whose only unknown key is the probe, in this table.
    probe: &'static str,
    /// The error path of the probe key.
    path: &'static str,
    /// Text of the heading that documents the table.
    heading: &'static str,
}

const TABLES: [Table; 24] = [
    Table {
        name: "runtime",
        probe: "[runtime]\nzz_probe = 1\n",
        path: "runtime.zz_probe",
        heading: "`[runtime]`",
    },
    Table {
        name: "admin",
        probe: "[admin]\nzz_probe = 1\n",
        path: "admin.zz_probe",
        heading: "`[admin]`",
    },
    Table {
        name: "server",
        probe: "[server]\nzz_probe = 1\n",
        path: "server.zz_probe",
        heading: "`[server]`",
    },
    Table {
        name: "listener",
        probe: "[listener.l]\naddress = \"127.0.0.1:8080\"\nzz_probe = 1\n",
        path: "listener.l.zz_probe",
        heading: "`[listener.<name>]`",
    },
    Table {
        name: "listener.tls",
        probe: "[listener.l]\naddress = \"127.0.0.1:8080\"\n[listener.l.tls]\ncertificates = []\nzz_probe = 1\n",
        path: "listener.l.tls.zz_probe",
        heading: "`[listener.<name>.tls]`",
    },
    Table {
        name: "upstream.tls",
        probe: "[upstream.u.tls]\nzz_probe = 1\n",
        path: "upstream.u.tls.zz_probe",
        heading: "`[upstream.<u>.tls]`",
    },
    Table {
        name: "adaptive_concurrency",
        probe: "[upstream.u.adaptive_concurrency]\nzz_probe = 1\n",
        path: "upstream.u.adaptive_concurrency.zz_probe",
        heading: "`[upstream.<u>.adaptive_concurrency]`",
    },
    Table {
        name: "rate_limit",
        probe: "[rate_limit.r]\nrate = 1\nzz_probe = 1\n",
        path: "rate_limit.r.zz_probe",
        heading: "`[rate_limit.<name>]`",
    },
    Table {
        name: "redis",
        probe: "[redis]\nzz_probe = 1\n",
        path: "redis.zz_probe",
        heading: "`[redis]`",
    },
    Table {
        name: "alerting",
        probe: "[alerting]\nzz_probe = 1\n",
        path: "alerting.zz_probe",
        heading: "`[alerting]`",
    },
    Table {
        name: "notifier",
        probe: "[alerting.notifier.n]\nzz_probe = 1\n",
        path: "alerting.notifier.n.zz_probe",
        heading: "`[alerting.notifier.<name>]`",
    },
    Table {
        name: "alert",
        probe: "[[alert]]\nname = \"a\"\nkind = \"shedding\"\nzz_probe = 1\n",
        path: "alert[0].zz_probe",
        heading: "`[[alert]]`",
    },
    Table {
        name: "access_log",
        probe: "[access_log]\nzz_probe = 1\n",
        path: "access_log.zz_probe",
        heading: "`[access_log]`",
    },
    Table {
        name: "route",
        probe: "[[route]]\nname = \"r\"\nupstream = \"u\"\nzz_probe = 1\n",
        path: "route[0].zz_probe",
        heading: "`[[route]]`",
    },
    Table {
        name: "route.match",
        probe: "[[route]]\nname = \"r\"\nupstream = \"u\"\n[route.match]\nzz_probe = 1\n",
        path: "route[0].match.zz_probe",
        heading: "`[route.match]`",
    },
    Table {
        name: "route.retry",
        probe: "[[route]]\nname = \"r\"\nupstream = \"u\"\n[route.retry]\nzz_probe = 1\n",
        path: "route[0].retry.zz_probe",
        heading: "`[route.retry]`",
    },
    Table {
        name: "failover",
        probe: "[upstream.u.failover]\nzz_probe = 1\n",
        path: "upstream.u.failover.zz_probe",
        heading: "`[upstream.<u>.failover]`",
    },
    Table {
        name: "outlier",
        probe: "[upstream.u.outlier]\nzz_probe = 1\n",
        path: "upstream.u.outlier.zz_probe",
        heading: "`[upstream.<u>.outlier]`",
    },
    Table {
        name: "limits",
        probe: "[upstream.u.limits]\nzz_probe = 1\n",
        path: "upstream.u.limits.zz_probe",
        heading: "`[upstream.<u>.limits]`",
    },
    Table {
        name: "retry_budget",
        probe: "[upstream.u.retry_budget]\nzz_probe = 1\n",
        path: "upstream.u.retry_budget.zz_probe",
        heading: "`[upstream.<u>.retry_budget]`",
    },
    Table {
        name: "upstream",
        probe: "[upstream.u]\nzz_probe = 1\n",
        path: "upstream.u.zz_probe",
        heading: "`[upstream.<name>]`",
    },
    Table {
        name: "health",
        probe: "[upstream.u.health]\nzz_probe = 1\n",
        path: "upstream.u.health.zz_probe",
        heading: "`[upstream.<u>.health]`",
    },
    Table {
        name: "region",
        probe: "[upstream.u.region.r]\nzz_probe = 1\n",
        path: "upstream.u.region.r.zz_probe",
        heading: "`[upstream.<u>.region.<r>]`",
    },
    Table {
        name: "endpoint",
        probe: "[upstream.u.region.r]\nendpoints = [{ address = \"127.0.0.1:9\", zz_probe = 1 }]\n",
        path: "upstream.u.region.r.endpoints[0].zz_probe",
        heading: "`{ address, weight }`",
    },
];

/// The keys a table accepts, read from the error for an unknown key.
fn accepted_keys(table: &Table) -> Vec<String> {
    let errors = levee_config::parse(table.probe)
        .expect_err(&format!("{}: the probe key must be refused", table.name));
    let error = errors
        .iter()
        .find(|e| e.path == table.path)
        .unwrap_or_else(|| panic!("{}: no error at {}: {errors}", table.name, table.path));
    // serde: "unknown field `zz_probe`, expected `a`", "... expected `a` or
    // `b`" or "... expected one of `a`, `b`, `c`"; toml may add context on
    // later lines ("in `match`"), which is not part of the list.
    let first_line = error.message.lines().next().unwrap_or_default();
    assert!(
        first_line.starts_with(&format!("unknown field `{PROBE}`")),
        "{}: unexpected message {:?}",
        table.name,
        error.message
    );
    let (_, expected) = first_line
        .split_once("expected")
        .unwrap_or_else(|| panic!("{}: no key list in {:?}", table.name, error.message));
    let keys: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(!keys.is_empty(), "{}: no keys in {:?}", table.name, error.message);
    keys
}

/// The top-level sections, read from the error for an unknown section.
fn accepted_sections() -> Vec<String> {
    let errors = levee_config::parse("[zz_probe]\nx = 1\n").expect_err("unknown section refused");
    let error = errors
        .iter()
        .find(|e| e.path == PROBE)
        .unwrap_or_else(|| panic!("no error at {PROBE}: {errors}"));
    let (_, list) = error
        .message
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("no section list in {:?}", error.message));
    list.split(',').map(|s| s.trim().to_string()).collect()
}

/// The text under the heading containing `marker`, up to the next heading
/// of the same or a higher level (subsections included).
fn section<'a>(md: &'a str, marker: &str) -> &'a str {
    let mut start = None;
    let mut level = 0;
    let mut offset = 0;
    let mut in_code = false;
    for line in md.split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let hashes = line.bytes().take_while(|&b| b == b'#').count();
        let is_heading = !in_code && hashes > 0 && line[hashes..].starts_with(' ');
        if is_heading {
            match start {
                None if line.contains(marker) => {
                    start = Some(offset);
                    level = hashes;
                }
                Some(s) if hashes <= level => return &md[s..offset],
                _ => {}
            }
        }
        offset += line.len();
    }
    match start {
        Some(s) => &md[s..],
        None => panic!("docs/config.md has no heading containing {marker}"),
    }
}

/// The keys the complete example sets, by table (names as in [`TABLES`]).
fn example_keys(example: &str) -> Vec<(&'static str, BTreeSet<String>)> {
    let root: toml::Table = toml::from_str(example).expect("the complete example is TOML");
    let keys = |t: &toml::Table| t.keys().cloned().collect::<BTreeSet<String>>();
    let tables = |v: Option<&toml::Value>| -> Vec<toml::Table> {
        match v {
            Some(toml::Value::Table(t)) => t.values().filter_map(|v| v.as_table().cloned()).collect(),
            Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_table().cloned()).collect(),
            _ => Vec::new(),
        }
    };
    let union = |ts: &[toml::Table]| ts.iter().flat_map(|t| t.keys().cloned()).collect::<BTreeSet<_>>();
    let single = |name: &str| {
        root.get(name)
            .and_then(|v| v.as_table())
            .map(keys)
            .unwrap_or_default()
    };

    let listeners = tables(root.get("listener"));
    let routes = tables(root.get("route"));
    let matches: Vec<toml::Table> = routes
        .iter()
        .filter_map(|r| r.get("match").and_then(|m| m.as_table()).cloned())
        .collect();
    let upstreams = tables(root.get("upstream"));
    let regions: Vec<toml::Table> = upstreams.iter().flat_map(|u| tables(u.get("region"))).collect();
    let sub = |parents: &[toml::Table], key: &str| -> Vec<toml::Table> {
        parents
            .iter()
            .filter_map(|p| p.get(key).and_then(|h| h.as_table()).cloned())
            .collect()
    };
    let health = sub(&upstreams, "health");
    let endpoints: Vec<toml::Table> = regions.iter().flat_map(|r| tables(r.get("endpoints"))).collect();
    let string_endpoint = regions.iter().any(|r| {
        r.get("endpoints")
            .and_then(|e| e.as_array())
            .is_some_and(|a| a.iter().any(|v| v.is_str()))
    });
    assert!(
        string_endpoint,
        "the complete example shows no endpoint as a plain string"
    );
    vec![
        ("runtime", single("runtime")),
        ("admin", single("admin")),
        ("server", single("server")),
        ("listener", union(&listeners)),
        ("listener.tls", union(&sub(&listeners, "tls"))),
        ("rate_limit", union(&tables(root.get("rate_limit")))),
        ("redis", single("redis")),
        ("alerting", single("alerting")),
        (
            "notifier",
            union(&tables(root.get("alerting").and_then(|a| a.get("notifier")))),
        ),
        ("alert", union(&tables(root.get("alert")))),
        ("access_log", single("access_log")),
        ("route", union(&routes)),
        ("route.match", union(&matches)),
        ("route.retry", union(&sub(&routes, "retry"))),
        ("upstream", union(&upstreams)),
        ("health", union(&health)),
        ("failover", union(&sub(&upstreams, "failover"))),
        ("outlier", union(&sub(&upstreams, "outlier"))),
        ("limits", union(&sub(&upstreams, "limits"))),
        ("retry_budget", union(&sub(&upstreams, "retry_budget"))),
        (
            "adaptive_concurrency",
            union(&sub(&upstreams, "adaptive_concurrency")),
        ),
        ("upstream.tls", union(&sub(&upstreams, "tls"))),
        ("region", union(&regions)),
        ("endpoint", union(&endpoints)),
    ]
}

#[test]
fn the_complete_example_is_valid() {
    let md = doc();
    let blocks = toml_blocks(&md);
    let example = blocks.first().expect("docs/config.md has a ```toml block");
    if let Err(errors) = levee_config::parse(&example.text) {
        panic!(
            "docs/config.md line {}: the complete example is refused:\n{errors}",
            example.line
        );
    }
}

#[test]
fn the_complete_example_sets_every_key() {
    let md = doc();
    let example = toml_blocks(&md).into_iter().next().expect("a ```toml block");
    let used = example_keys(&example.text);
    let mut missing = Vec::new();
    for table in &TABLES {
        let (_, set) = used
            .iter()
            .find(|(name, _)| *name == table.name)
            .expect("every table is looked at");
        for key in accepted_keys(table) {
            if !set.contains(&key) {
                missing.push(format!("{}: {key}", table.name));
            }
        }
    }
    for s in accepted_sections() {
        let present = toml::from_str::<toml::Table>(&example.text)
            .expect("TOML")
            .contains_key(&s);
        if !present {
            missing.push(format!("section {s}"));
        }
    }
    assert!(
        missing.is_empty(),
        "the complete example in docs/config.md does not set: {missing:?}"
    );
}

#[test]
fn every_key_is_documented_under_its_table() {
    let md = doc();
    let mut missing = Vec::new();
    for table in &TABLES {
        let text = section(&md, table.heading);
        for key in accepted_keys(table) {
            if !text.contains(&format!("`{key}`")) {
                missing.push(format!("{} (under the heading {})", key, table.heading));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys levee accepts but docs/config.md does not document: {missing:?}"
    );
}

#[test]
fn every_section_is_documented() {
    let md = doc();
    for s in accepted_sections() {
        let documented = [format!("`[{s}]`"), format!("`[{s}."), format!("`[[{s}]]`")]
            .iter()
            .any(|form| md.contains(form.as_str()));
        assert!(documented, "section {s} is not documented in docs/config.md");
    }
}

#[test]
fn the_probes_see_real_key_lists() {
    // Guards the probing itself: were serde's message to change shape, the
    // tests above must fail rather than check nothing.
    let server = accepted_keys(&TABLES[2]);
    assert!(server.iter().any(|k| k == "header_timeout"), "{server:?}");
    let endpoint = accepted_keys(
        TABLES
            .iter()
            .find(|t| t.name == "endpoint")
            .expect("endpoint table"),
    );
    assert_eq!(endpoint, ["address", "weight"]);
    let matcher = accepted_keys(
        TABLES
            .iter()
            .find(|t| t.name == "route.match")
            .expect("match table"),
    );
    assert!(!matcher.iter().any(|k| k == "match"), "{matcher:?}");
    assert!(accepted_sections().iter().any(|s| s == "upstream"));
}

#[test]
fn other_toml_blocks_use_only_known_keys() {
    let md = doc();
    let blocks = fenced_blocks(&md);
    for (i, block) in blocks.iter().enumerate() {
        if block.info != "toml" || block.text.starts_with(INVALID_MARK) {
            continue;
        }
        // Fragments may lack a listener or an upstream; they must still be
        // TOML that levee reads without an unknown key or a type error.
        let Err(errors) = levee_config::parse(&block.text) else {
            continue;
        };
        for e in errors.iter() {
            let shape = e.message.starts_with("unknown")
                || e.message.contains("invalid type")
                || e.path.starts_with("line ")
                || e.message.contains("must be an array of tables")
                || e.message.contains("must be a table of named tables");
            assert!(!shape, "docs/config.md line {} (block {i}): {e}", block.line);
        }
    }
}

#[test]
fn invalid_examples_fail_as_shown() {
    let md = doc();
    let blocks = fenced_blocks(&md);
    let mut seen = 0;
    for (i, block) in blocks.iter().enumerate() {
        if block.info != "toml" || !block.text.starts_with(INVALID_MARK) {
            continue;
        }
        seen += 1;
        let errors = levee_config::parse(&block.text).expect_err(&format!(
            "docs/config.md line {}: marked invalid but accepted",
            block.line
        ));
        // The next block is the output of `levee check`: a line naming the
        // file and the count, then one indented line per problem.
        let output = blocks
            .get(i + 1)
            .unwrap_or_else(|| panic!("line {}: no output block follows", block.line));
        let shown: Vec<&str> = output.text.lines().filter_map(|l| l.strip_prefix("  ")).collect();
        let actual: Vec<String> = errors
            .iter()
            .map(|e| e.to_string().lines().next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            shown, actual,
            "docs/config.md line {}: the errors shown are not what levee reports",
            output.line
        );
        let count = format!(
            "{} problem{}:",
            actual.len(),
            if actual.len() == 1 { "" } else { "s" }
        );
        assert!(
            output.text.contains(&count),
            "docs/config.md line {}: expected {count:?} in the output",
            output.line
        );
    }
    assert!(seen > 0, "docs/config.md shows no invalid example");
}
