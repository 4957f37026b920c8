//! The scenario core's tests: explicit values, no sockets.

mod parse;
mod plan;
mod report;
mod verdict;

/// The example of docs/chaos.md.
pub const EXAMPLE: &str = r#"
[scenario]
name = "region-outage"
seed = 7
duration = "40s"

[target]
demo = true

[load]
rate = 200
methods = { GET = 0.8, POST = 0.2 }

[[fault]]
at = "5s"
action = "fail"
region = "primary"
for = "15s"

[slo]
success_ratio = 0.999
success_ratio_idempotent = 1.0
p99 = "250ms"
max_duplicated = 0
failover_within = "2s"
max_lost = 0
"#;

/// The scenario file in docs/chaos.md is the example, and parses.
#[test]
fn the_docs_example_is_this_one() {
    let docs = include_str!("../../../../docs/chaos.md");
    let section = &docs[docs.find("### The scenario file").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let documented = crate::scenario::parse(block).unwrap();
    assert_eq!(documented, crate::scenario::parse(EXAMPLE).unwrap());
}
