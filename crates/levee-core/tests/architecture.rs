//! Architecture guards over the workspace's sources (`crates/*/src`, test
//! modules left out), read as text with no dependency:
//!
//! - no import cycle between the files of a crate, beyond the ones listed
//!   in [`KNOWN_CYCLES`];
//! - no function longer than 150 lines, beyond the ones listed in [`KNOWN_LONG_FUNCTIONS`].
//!
//! Both lists are empty: the workspace has no import cycle and no function
//! over its limit. They only ever shrink: the test fails on a new cycle or
//! long function, on a listed function that grew, and when a listed cycle
//! is gone or smaller or a listed function is back under the limit, so
//! that an entry is updated and nothing comes back unnoticed. It lives in levee-core, the crate with the fewest
//! dependencies, to build fast; `docs/testing.md` says how to update the
//! lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate's file graph: each module's file, and the modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Import cycles tolerated, each a strongly connected component of a
/// crate's file graph with its files sorted: none, and it stays so. The
/// list is kept for a cycle that must be lived with for a while; it may
/// only ever shrink.
const KNOWN_CYCLES: &[&[&str]] = &[];

/// Functions tolerated over the limit, as (file, name, lines from the `fn`
/// line to its closing brace): none. Like [`KNOWN_CYCLES`], it may only
/// ever shrink.
const KNOWN_LONG_FUNCTIONS: &[(&str, &str, usize)] = &[];

/// The longest a function outside tests may be, in any crate.
const LIMIT: usize = 150;

#[test]
fn no_new_import_cycles_and_the_known_ones_are_listed_exactly() {
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut graphs = BTreeMap::new();
    for krate in crates() {
        let files = read_crate(&krate);
        let graph = file_graph(&files);
        for component in cycles(&graph) {
            found.push(component.iter().map(|m| files[m].path.clone()).collect());
        }
        graphs.insert(krate, (files, graph));
    }
    let known: BTreeSet<Vec<String>> = KNOWN_CYCLES
        .iter()
        .map(|c| c.iter().map(|f| (*f).to_string()).collect())
        .collect();
    let found: BTreeSet<Vec<String>> = found.into_iter().collect();
    let mut problems = Vec::new();
    let mut changed: BTreeSet<&Vec<String>> = BTreeSet::new();
    for c in found.difference(&known) {
        let subset = |a: &Vec<String>, b: &Vec<String>| a.iter().all(|f| b.contains(f));
        let old = known.difference(&found).find(|k| subset(k, c) || subset(c, k));
        let what = match old {
            Some(k) if k.len() < c.len() => {
                format!("a known cycle grew from {} to {} files", k.len(), c.len())
            }
            Some(k) => format!(
                "a known cycle shrank from {} to {} files: its entry in KNOWN_CYCLES is now\n{}",
                k.len(),
                c.len(),
                entry(c)
            ),
            None => "a new import cycle".to_string(),
        };
        changed.extend(old);
        problems.push(format!("{what}\n{}", describe(c, &graphs)));
    }
    for k in known.difference(&found).filter(|k| !changed.contains(k)) {
        problems.push(format!(
            "a known cycle is gone: remove its entry from KNOWN_CYCLES\n    {}",
            k.join("\n    ")
        ));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n\n"));
}

#[test]
fn no_new_long_functions_and_the_known_ones_are_listed_exactly() {
    let mut found: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut lines: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for krate in crates() {
        for file in read_crate(&krate).into_values() {
            for f in functions(&file.text) {
                if f.lines > LIMIT {
                    let key = (file.path.clone(), f.name);
                    found.entry(key.clone()).or_default().push(f.lines);
                    lines.entry(key).or_default().push(f.line);
                }
            }
        }
    }
    let mut known: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for &(file, name, n) in KNOWN_LONG_FUNCTIONS {
        known
            .entry((file.to_string(), name.to_string()))
            .or_default()
            .push(n);
    }
    let mut problems = Vec::new();
    for (key, now) in &found {
        let (file, name) = key;
        let was = known.get(key).cloned().unwrap_or_default();
        for (i, &n) in now.iter().enumerate() {
            let line = lines[key][i];
            match was.get(i) {
                None => problems.push(format!(
                    "new: {file}:{line}: fn {name} is {n} lines (limit {LIMIT}); split it"
                )),
                Some(&w) if n > w => problems.push(format!(
                    "grew: {file}:{line}: fn {name} is {n} lines, listed at {w}; shorten it"
                )),
                Some(_) => {}
            }
        }
        if was.len() > now.len() {
            problems.push(format!(
                "fixed: {file}: fn {name} is no longer over the limit: remove it from KNOWN_LONG_FUNCTIONS"
            ));
        }
    }
    for ((file, name), _) in known.iter().filter(|(k, _)| !found.contains_key(*k)) {
        problems.push(format!(
            "fixed: {file}: fn {name} is no longer over the limit (or gone): remove it from KNOWN_LONG_FUNCTIONS"
        ));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// The crates' directories, relative to the workspace root.
fn crates() -> Vec<String> {
    let dir = root().join("crates");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("src").is_dir())
        .map(|e| format!("crates/{}", e.file_name().to_string_lossy()))
        .collect();
    out.sort();
    out
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One source file: its path from the workspace root, and its text with
/// the `#[cfg(test)]` modules blanked out (lines kept, for line numbers).
struct File {
    path: String,
    text: String,
}

/// A crate's files by module path (`""` for the crate root, `a::b` for
/// `src/a/b.rs`). Files that are `#[cfg(test)] mod x;` are left out, and
/// so is `main.rs` beside a `lib.rs` (a crate of its own).
fn read_crate(krate: &str) -> BTreeMap<String, File> {
    let src = root().join(krate).join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    let has_lib = src.join("lib.rs").is_file();
    let mut texts = BTreeMap::new();
    for path in paths {
        let rel = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let Some(stem) = rel.strip_suffix(".rs") else {
            continue;
        };
        if stem == "main" && has_lib {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        texts.insert(format!("{krate}/src/{rel}"), (module_of(stem), text));
    }
    sources(texts)
}

/// Files by module path from (path, (module, text)), test modules blanked
/// and test-only files dropped.
fn sources(texts: BTreeMap<String, (String, String)>) -> BTreeMap<String, File> {
    let mut test_only: BTreeSet<String> = BTreeSet::new();
    let mut files = BTreeMap::new();
    for (path, (module, text)) in texts {
        let (text, test_children) = strip_tests(&text);
        for child in test_children {
            test_only.insert(if module.is_empty() {
                child
            } else {
                format!("{module}::{child}")
            });
        }
        files.insert(module, File { path, text });
    }
    files.retain(|m, _| !test_only.contains(m));
    files
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `lib` and `main` are the crate root, `a/b` is `a::b`.
fn module_of(stem: &str) -> String {
    if stem == "lib" || stem == "main" {
        String::new()
    } else {
        stem.replace('/', "::")
    }
}

/// The text with every `#[cfg(test)] mod name { ... }` blanked (rustfmt
/// puts its closing brace at the indentation of `mod`), and the names of
/// the `#[cfg(test)] mod name;` declared.
fn strip_tests(text: &str) -> (String, Vec<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut keep = vec![true; lines.len()];
    let mut children = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "#[cfg(test)]" {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < lines.len() && lines[j].trim_start().starts_with("#[") {
            j += 1;
        }
        let Some(decl) = lines.get(j).map(|l| l.trim()) else {
            break;
        };
        let Some(rest) = strip_visibility(decl).strip_prefix("mod ") else {
            i = j;
            continue;
        };
        if let Some(name) = rest.strip_suffix(';') {
            children.push(name.trim().to_string());
            keep[i..=j].iter_mut().for_each(|k| *k = false);
            i = j + 1;
            continue;
        }
        let indent = indentation(lines[j]);
        let close = format!("{indent}}}");
        let end = (j + 1..lines.len())
            .find(|&k| lines[k] == close)
            .unwrap_or(lines.len() - 1);
        keep[i..=end].iter_mut().for_each(|k| *k = false);
        i = end + 1;
    }
    let mut out = String::with_capacity(text.len());
    for (line, keep) in lines.iter().zip(keep) {
        if keep {
            out.push_str(line);
        }
        out.push('\n');
    }
    (out, children)
}

fn indentation(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

fn strip_visibility(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix("pub(") {
        return rest.split_once(") ").map_or(s, |(_, r)| r);
    }
    s.strip_prefix("pub ").unwrap_or(s)
}

// ---- The file graph ----

/// Which files each file uses, by module path: `crate::a::b` paths to
/// the longest module with a file, `super::x` paths to the sibling `x` or
/// else the parent's file (`super::super::` one level up each), and a
/// module's `child::x` paths to its child modules' files. A `{...}` group
/// after either, nested or not, is one path per item (`self` is the path
/// before the group, `*` too). Comments do not count, doc comments and
/// their intra-doc links included.
fn file_graph(files: &BTreeMap<String, File>) -> Graph {
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .map(|i| parts[..i].join("::"))
            .find(|m| files.contains_key(m))
    };
    let mut graph = BTreeMap::new();
    for (module, file) in files {
        let src = without_comments(&file.text);
        let mut uses = BTreeSet::new();
        for path in paths_after(&src, "crate::") {
            if !path.is_empty() {
                uses.extend(resolve(&path));
            }
        }
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        for path in paths_after(&src, "super::") {
            let mut base = parent;
            let mut rest = path.as_str();
            while let Some(up) = rest
                .strip_prefix("super")
                .filter(|r| r.is_empty() || r.starts_with("::"))
            {
                base = base.rsplit_once("::").map_or("", |(p, _)| p);
                rest = up.strip_prefix("::").unwrap_or(up);
            }
            let full = match (base.is_empty(), rest.is_empty()) {
                (_, true) => base.to_string(),
                (true, false) => rest.to_string(),
                (false, false) => format!("{base}::{rest}"),
            };
            let target = resolve(&full).or_else(|| files.contains_key(base).then(|| base.to_string()));
            uses.extend(target);
        }
        if !module.is_empty() {
            let prefix = format!("{module}::");
            for child in files.keys() {
                let Some(name) = child.strip_prefix(&prefix) else {
                    continue;
                };
                if !name.contains("::") && names_child(&src, name) {
                    uses.insert(child.clone());
                }
            }
        }
        uses.remove(module);
        graph.insert(module.clone(), uses);
    }
    graph
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `src` with its comments (`//` to the end of the line, `/* */` nested)
/// blanked to spaces, lines kept. String and character literals are
/// stepped over, so that the `//` of `"http://"` or the `"` of `'"'` does
/// not throw the rest of the line off.
fn without_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let word = |i: usize| i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied();
        match b[i] {
            b'/' if next == Some(b'/') => {
                let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if next == Some(b'*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < b.len() && depth > 0 {
                    match (b[j], b.get(j + 1)) {
                        (b'/', Some(b'*')) => (depth, j) = (depth + 1, j + 2),
                        (b'*', Some(b'/')) => (depth, j) = (depth - 1, j + 2),
                        _ => j += 1,
                    }
                }
                let end = j.min(b.len());
                blank(&mut out, i, end);
                i = end;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                i = j + 1;
            }
            // `r"..."`, `r#"..."#`, `br#"..."#`: no escapes, ends at `"` and
            // as many `#`.
            b'r' if !word(i) || (matches!(b[i - 1], b'b' | b'c') && !word(i - 1)) => {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let body = i + 2 + hashes;
                i = b[body..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |n| body + n + close.len());
            }
            // A character literal (`'x'`, `'\''`, `'é'`), or else a lifetime
            // or label, left as it is.
            b'\'' => {
                if next == Some(b'\\') {
                    let end = b.get(i + 3..).and_then(|r| r.iter().position(|&c| c == b'\''));
                    i = end.map_or(b.len(), |n| i + 3 + n + 1);
                } else {
                    let width = src[i + 1..].chars().next().map_or(0, char::len_utf8);
                    i += if b.get(i + 1 + width) == Some(&b'\'') {
                        2 + width
                    } else {
                        1
                    };
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("only ASCII bytes replaced by spaces")
}

/// The paths named by each use of `prefix` (`crate::`, `super::`) that is
/// not the end of a longer word, relative to it: `a::b` for `a::b::c`
/// when only `a::b` is followed by `::` and a word, `a::b` and `a::c::d`
/// for `a::{b, c::{d}}`, `a` for `a::{self}` and `a::*`, and `""` for a
/// lone `{self}` or `*`.
fn paths_after(src: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = src[at..].find(prefix) {
        let begin = at + found;
        let start = begin + prefix.len();
        if src[..begin].ends_with(is_word) {
            at = start;
            continue;
        }
        let (paths, len) = use_tree(&src[start..]);
        out.extend(paths);
        at = start + len;
    }
    out
}

/// The paths of the use tree at the start of `s` (`a::b`, `a::*`,
/// `a::{b, c::{self, d}}`, `{a, b}`), and its length.
fn use_tree(s: &str) -> (Vec<String>, usize) {
    let len = path_len(s);
    let head = &s[..len];
    let rest = &s[len..];
    let group = if len == 0 {
        rest.starts_with('{').then_some(0)
    } else {
        rest.starts_with("::{").then_some(2)
    };
    let Some(open) = group else {
        if len == 0 && rest.starts_with('*') {
            return (vec![String::new()], 1);
        }
        return (
            if len > 0 {
                vec![head.to_string()]
            } else {
                Vec::new()
            },
            len,
        );
    };
    let inner = len + open + 1;
    let mut depth = 0;
    let mut items = vec![inner];
    let mut close = s.len();
    for (i, c) in s[inner..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                close = inner + i;
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => items.push(inner + i + 1),
            _ => {}
        }
    }
    items.push(close + 1);
    let mut paths = Vec::new();
    for pair in items.windows(2) {
        let item = s[pair[0]..pair[1] - 1].trim();
        for path in use_tree(item).0 {
            paths.push(match (head, path.as_str()) {
                (_, "self" | "") => head.to_string(),
                ("", _) => path,
                _ => format!("{head}::{path}"),
            });
        }
    }
    (paths, (close + 1).min(s.len()))
}

/// The length of the `a::b::c` at the start of `s` (0 if none).
fn path_len(s: &str) -> usize {
    let word = |s: &str| s.find(|c: char| !is_word(c)).unwrap_or(s.len());
    let mut len = word(s);
    if len == 0 {
        return 0;
    }
    loop {
        let rest = &s[len..];
        match rest.strip_prefix("::") {
            Some(next) if word(next) > 0 => len += 2 + word(next),
            _ => return len,
        }
    }
}

/// Whether `src` has a path through child module `name` (`name::x` or
/// `self::name::x`, not `other::name::x`).
fn names_child(src: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    src.match_indices(&needle).any(|(i, _)| {
        let before = &src[..i];
        let before = before.strip_suffix("self::").unwrap_or(before);
        !before.ends_with(|c: char| is_word(c) || c == ':')
    })
}

/// The strongly connected components of more than one file (Tarjan), each
/// sorted by module path.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}

/// A cycle as its entry in [`KNOWN_CYCLES`] is written.
fn entry(component: &[String]) -> String {
    let files: Vec<String> = component.iter().map(|f| format!("        {f:?},\n")).collect();
    format!("    &[\n{}    ],", files.concat())
}

/// A cycle's files, each with the files of the cycle it uses.
fn describe(component: &[String], graphs: &BTreeMap<String, (BTreeMap<String, File>, Graph)>) -> String {
    let mut out = String::new();
    for (files, graph) in graphs.values() {
        let path_of = |m: &String| files[m].path.clone();
        for (module, uses) in graph {
            let from = path_of(module);
            if !component.contains(&from) {
                continue;
            }
            let to: Vec<String> = uses
                .iter()
                .map(path_of)
                .filter(|p| component.contains(p))
                .collect();
            out.push_str(&format!("    {from}\n        uses {}\n", to.join(", ")));
        }
    }
    out
}

// ---- Function lengths ----

struct Function {
    name: String,
    /// Its `fn` line, from 1.
    line: usize,
    /// From the `fn` line to the closing brace, both counted.
    lines: usize,
}

/// The functions with a body in rustfmt-formatted `src`: a `fn` line and
/// the first line after it that is its closing brace at its indentation.
fn functions(src: &str) -> Vec<Function> {
    let lines: Vec<&str> = src.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line.trim_start()) else {
            continue;
        };
        // The signature ends at the first line ending in `{` (a body) or
        // `;` (none); `{}` on one line is an empty body.
        let Some(open) = (i..lines.len()).find(|&j| {
            let t = lines[j].trim_end();
            t.ends_with('{') || t.ends_with(';') || t.ends_with('}')
        }) else {
            continue;
        };
        if !lines[open].trim_end().ends_with('{') {
            continue;
        }
        let close = format!("{}}}", indentation(line));
        if let Some(end) = (open + 1..lines.len()).find(|&k| lines[k] == close) {
            out.push(Function {
                name: name.to_string(),
                line: i + 1,
                lines: end - i + 1,
            });
        }
    }
    out
}

/// The name of the function a line declares: `fn f`, `pub(crate) async fn f`.
fn fn_name(line: &str) -> Option<&str> {
    let mut rest = strip_visibility(line);
    for qualifier in ["default ", "const ", "async ", "unsafe "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    if let Some(abi) = rest.strip_prefix("extern \"") {
        rest = abi.split_once("\" ")?.1;
    }
    let rest = rest.strip_prefix("fn ")?;
    let len = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
    (len > 0).then(|| &rest[..len])
}

// ---- The checkers' own tests ----

/// A crate from (module path, text) pairs, files named after the modules.
fn fake_crate(modules: &[(&str, &str)]) -> BTreeMap<String, File> {
    let texts = modules
        .iter()
        .map(|(m, text)| {
            let file = if m.is_empty() {
                "lib".to_string()
            } else {
                m.replace("::", "/")
            };
            (format!("src/{file}.rs"), ((*m).to_string(), (*text).to_string()))
        })
        .collect();
    sources(texts)
}

fn cycles_of(modules: &[(&str, &str)]) -> Vec<Vec<String>> {
    cycles(&file_graph(&fake_crate(modules)))
}

#[test]
fn a_cycle_through_crate_paths_is_found() {
    let found = cycles_of(&[
        ("", "mod a;\nmod b;\nmod c;\n"),
        ("a", "use crate::b::Thing;\n"),
        ("b", "pub struct Thing;\nfn f() -> crate::a::Other { todo!() }\n"),
        ("c", "use crate::a::Other;\n"),
    ]);
    assert_eq!(found, [["a", "b"]]);
}

#[test]
fn a_group_import_is_one_edge_per_item() {
    let found = cycles_of(&[
        ("", ""),
        ("a", "use crate::{b, c::d::Thing};\n"),
        ("b", ""),
        ("c", "pub mod d;\n"),
        ("c::d", "use crate::a::X;\n"),
    ]);
    assert_eq!(found, [["a", "c::d"]]);
}

fn uses_of(modules: &[(&str, &str)], module: &str) -> Vec<String> {
    file_graph(&fake_crate(modules))[module].iter().cloned().collect()
}

#[test]
fn nested_groups_are_one_edge_per_item() {
    let modules = [
        ("", ""),
        ("a", "use crate::{b::{self, c::X}, d::{e::{Y, Z}}};\n"),
        ("b", "pub mod c;\n"),
        ("b::c", ""),
        ("d", "pub mod e;\n"),
        ("d::e", ""),
    ];
    assert_eq!(uses_of(&modules, "a"), ["b", "b::c", "d::e"]);
}

#[test]
fn a_super_group_is_one_edge_per_item() {
    let modules = [
        ("", ""),
        ("up", "mod a;\nmod b;\nmod c;\n"),
        ("up::a", "use super::{Upstream, b::{Thing, c::Other}};\n"),
        ("up::b", "pub mod c;\nuse super::{self as up, c};\n"),
        ("up::b::c", "use super::super::{a};\n"),
        ("up::c", "use super::*;\n"),
    ];
    assert_eq!(uses_of(&modules, "up::a"), ["up", "up::b", "up::b::c"]);
    assert_eq!(uses_of(&modules, "up::b"), ["up", "up::c"]);
    assert_eq!(uses_of(&modules, "up::b::c"), ["up::a"]);
    assert_eq!(uses_of(&modules, "up::c"), ["up"]);
    let found = cycles_of(&[
        ("", ""),
        (
            "up",
            "mod h1;\nmod h2;\npub struct Shared;\npub fn start() { h1::run(); }\n",
        ),
        ("up::h1", "use super::{Shared, h2::Frame};\npub fn run() {}\n"),
        ("up::h2", "pub struct Frame;\n"),
    ]);
    assert_eq!(found, [["up", "up::h1"]]);
}

#[test]
fn paths_in_comments_are_not_uses() {
    let modules = [
        ("", ""),
        (
            "a",
            "//! See [`crate::b`].\n\
             /// Like [`super::c::X`], and [`d::Y`](crate::d::Y).\n\
             pub fn f<'t>(x: &'t str) -> crate::e::Z {} // crate::d::Y\n\
             /* crate::d /* nested */ crate::d */ use crate::{f::V, h};\n\
             const URL: &str = \"http://x\"; use crate::i::W;\n\
             const Q: char = '\"'; use crate::j::W; // crate::g \"\n\
             const R: &str = r#\"a \" // b\"#; use crate::k;\n",
        ),
        ("b", ""),
        ("c", ""),
        ("d", ""),
        ("e", ""),
        ("f", ""),
        ("g", ""),
        ("h", ""),
        ("i", ""),
        ("j", ""),
        ("k", ""),
    ];
    assert_eq!(uses_of(&modules, "a"), ["e", "f", "h", "i", "j", "k"]);
}

#[test]
fn super_and_child_paths_make_a_cycle_between_parent_and_child() {
    let found = cycles_of(&[
        ("", ""),
        ("up", "mod watch;\npub fn start() { watch::run(); }\n"),
        ("up::watch", "use super::Upstream;\npub fn run() {}\n"),
        ("up::other", "use super::watch::run;\n"),
    ]);
    assert_eq!(found, [["up", "up::watch"]]);
}

#[test]
fn no_cycle_when_the_uses_go_one_way() {
    let found = cycles_of(&[
        ("", ""),
        ("a", "use crate::b::X;\nuse crate::c;\n"),
        ("b", "use crate::c::Y;\n// crate::b is this file\n"),
        ("c", "use other::a::X;\nuse self_b::x;\n"),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn test_modules_do_not_count() {
    let found = cycles_of(&[
        ("", "#[cfg(test)]\nmod tests;\n"),
        ("a", "use crate::b::X;\n"),
        (
            "b",
            "pub struct X;\n\n#[cfg(test)]\nmod tests {\n    use crate::a::Y;\n}\n\nfn after() -> crate::c::Z {}\n",
        ),
        ("c", ""),
        ("tests", "use crate::a::X;\nuse crate::b::X;\n"),
    ]);
    assert!(found.is_empty(), "{found:?}");
    let files = fake_crate(&[("", "#[cfg(test)]\nmod tests;\n"), ("tests", "")]);
    assert!(!files.contains_key("tests"), "a test-only file is left out");
}

#[test]
fn functions_are_measured_from_fn_to_closing_brace() {
    let body = "        let x = 1;\n".repeat(10);
    let src = format!(
        "trait T {{\n    fn declared(&self);\n    fn defaulted(&self) {{}}\n}}\n\n\
         impl S {{\n    pub(crate) async fn long(\n        &self,\n        a: u8,\n    ) -> u8\n    where\n        u8: Copy,\n    {{\n{body}        if a > 0 {{\n            return a;\n        }}\n        a\n    }}\n}}\n\n\
         pub const fn short() -> u8 {{\n    1\n}}\n"
    );
    let found: Vec<(String, usize, usize)> = functions(&src)
        .into_iter()
        .map(|f| (f.name, f.line, f.lines))
        .collect();
    assert_eq!(found, [("long".to_string(), 7, 22), ("short".to_string(), 31, 3)]);
}

#[test]
fn long_functions_in_test_modules_do_not_count() {
    let body = "        let x = 1;\n".repeat(300);
    let src = format!("#[cfg(test)]\nmod tests {{\n    #[test]\n    fn long() {{\n{body}    }}\n}}\n");
    let files = fake_crate(&[("", &src)]);
    assert!(functions(&files[""].text).is_empty());
    assert_eq!(functions(&src).len(), 1, "measured when not a test");
}
