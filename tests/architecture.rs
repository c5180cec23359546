//! The walls of castellan's layout, checked from the source (as ArchUnit does for Java): each
//! folder of `src/` may use only the layers below it, so a change that breaks a wall fails here
//! with the file, the line and the import. The layers and what each may use are in `src/lib.rs`.
//!
//! Test code (`#[cfg(test)]` items) is left out: tests may reach anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// castellan's layers, lowest first. A module may use the modules of lower layers only (and
/// itself); `policy` may use only `clock` and `net`.
const LAYERS: &[&[&str]] = &[
    &["clock", "net", "crypto", "tunnel"],
    &["trace"],
    &["policy"],
    &["config"],
    &["store"],
    &["identity"],
    &["web"],
    &["runtime"],
    &["gate"],
    &["endpoints"],
    &["admin"],
    &["server"],
];

/// Files that are not part of the layering: the fuzzers' entry points reach into every layer.
const OUTSIDE: &[&str] = &["fuzz_targets", "lib"];

/// Files over [`MAX_LINES`], each one cohesive thing (tests included in the count).
const LONG_FILES: &[(&str, &str)] = &[(
    "src/config.rs",
    "the configuration reader: every key's check and message, and their tests",
)];
const MAX_LINES: usize = 700;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's files (not the command line), by top-level module.
fn library() -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files
        .into_iter()
        .filter(|p| !p.starts_with(src().join("bin")))
        .map(|p| {
            let rel = p.strip_prefix(src()).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            (first.trim_end_matches(".rs").to_string(), p)
        })
        .collect()
}

/// The file's lines with `#[cfg(test)]` items blanked out, numbered from 1. A `tests.rs`
/// file is a unit-test module (its parent declares it `#[cfg(test)] mod tests;`, which
/// `unit_test_files_are_compiled_only_for_tests` checks), so none of it is shipped code.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return Vec::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut skipping = false;
    let mut depth: i64 = 0;
    let mut seen_brace = false;
    for (i, line) in text.lines().enumerate() {
        if !skipping && line.trim_start().starts_with("#[cfg(test)]") {
            skipping = true;
            depth = 0;
            seen_brace = false;
            continue;
        }
        if skipping {
            for c in line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        seen_brace = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let ends_item = line.trim_end().ends_with(';') && !seen_brace;
            if (seen_brace && depth <= 0) || ends_item {
                skipping = false;
            }
            continue;
        }
        let code = line.split("//").next().unwrap_or("").to_string();
        out.push((i + 1, code));
    }
    out
}

/// Every `crate::NAME` a line names (in `use` lines and in paths).
fn crate_refs(line: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if let Some(braced) = after.strip_prefix('{') {
            // `use crate::{a, b::c}`: every top-level name in the braces.
            let inner = braced.split('}').next().unwrap_or("");
            for part in inner.split(',') {
                let n: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !n.is_empty() {
                    refs.push(n);
                }
            }
        }
        let len = name.len();
        if !name.is_empty() && !after.starts_with('{') {
            refs.push(name);
        }
        rest = &after[len..];
    }
    refs
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn every_import_points_down_a_layer() {
    let mut broken = Vec::new();
    for (module, path) in library() {
        if OUTSIDE.contains(&module.as_str()) {
            continue;
        }
        let Some(mine) = layer_of(&module) else {
            broken.push(format!(
                "{}: module `{module}` is in no layer: add it to LAYERS in tests/architecture.rs and to the map in src/lib.rs",
                rel(&path)
            ));
            continue;
        };
        for (n, line) in code_lines(&path) {
            for used in crate_refs(&line) {
                if used == module {
                    continue;
                }
                let allowed = match module.as_str() {
                    "policy" => matches!(used.as_str(), "clock" | "net"),
                    _ => layer_of(&used).is_some_and(|theirs| theirs < mine),
                };
                if !allowed {
                    broken.push(format!(
                        "{}:{n}: `{module}` may not use `crate::{used}` ({})",
                        rel(&path),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports that break the layering:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_policy_core_is_pure() {
    let mut broken = Vec::new();
    for (module, path) in library() {
        if module != "policy" {
            continue;
        }
        for (n, line) in code_lines(&path) {
            for banned in [
                "tokio",
                "hyper",
                "http::",
                "sqlx",
                "reqwest",
                "async fn",
                ".await",
                "std::fs",
                "std::net::Tcp",
            ] {
                if line.contains(banned) {
                    broken.push(format!(
                        "{}:{n}: the policy core uses `{banned}`: {}",
                        rel(&path),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn only_the_store_names_sqlx_and_it_knows_no_http() {
    let mut broken = Vec::new();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for path in files {
        let in_store = path.starts_with(src().join("store"));
        for (n, line) in code_lines(&path) {
            if !in_store && line.contains("sqlx") {
                broken.push(format!(
                    "{}:{n}: only store/ may name sqlx: {}",
                    rel(&path),
                    line.trim()
                ));
            }
            if in_store
                && (line.contains("hyper")
                    || line.contains("http::")
                    || line.contains("crate::web"))
            {
                broken.push(format!(
                    "{}:{n}: the store knows no HTTP: {}",
                    rel(&path),
                    line.trim()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn only_the_config_reads_the_environment() {
    let mut broken = Vec::new();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for path in files {
        if path == src().join("config.rs") {
            continue;
        }
        for (n, line) in code_lines(&path) {
            if ["env::var", "var_os("].iter().any(|b| line.contains(b)) {
                broken.push(format!(
                    "{}:{n}: only config.rs reads the environment: {}",
                    rel(&path),
                    line.trim()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn only_web_builds_error_responses() {
    // Error statuses and WWW-Authenticate appear only in web/: everything else returns a
    // `Failure`, which web/failure.rs turns into the one shape.
    const ERRORS: &[&str] = &[
        "StatusCode::BAD_REQUEST",
        "StatusCode::UNAUTHORIZED",
        "StatusCode::FORBIDDEN",
        "StatusCode::NOT_FOUND",
        "StatusCode::METHOD_NOT_ALLOWED",
        "StatusCode::CONFLICT",
        "StatusCode::TOO_MANY_REQUESTS",
        "StatusCode::INTERNAL_SERVER_ERROR",
        "StatusCode::BAD_GATEWAY",
        "StatusCode::SERVICE_UNAVAILABLE",
        "StatusCode::GATEWAY_TIMEOUT",
        "WWW_AUTHENTICATE",
    ];
    let mut broken = Vec::new();
    for (module, path) in library() {
        if module == "web" || OUTSIDE.contains(&module.as_str()) {
            continue;
        }
        for (n, line) in code_lines(&path) {
            for e in ERRORS {
                if line.contains(e) {
                    broken.push(format!(
                        "{}:{n}: `{e}` outside web/: return a web::failure::Failure instead: {}",
                        rel(&path),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn no_long_argument_lists_and_no_long_files() {
    let mut broken = Vec::new();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: BTreeMap<&str, &str> = LONG_FILES.iter().copied().collect();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("too_many_arguments") {
            broken.push(format!(
                "{}: allows too_many_arguments: pass a context or a struct instead",
                rel(&path)
            ));
        }
        let lines = text.lines().count();
        if lines > MAX_LINES && !long.contains_key(rel(&path).as_str()) {
            broken.push(format!(
                "{}: {lines} lines (more than {MAX_LINES}): split it, or name it in LONG_FILES with the reason",
                rel(&path)
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn every_folder_says_what_it_holds() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "bin") {
            let m = path.join("mod.rs");
            let text = std::fs::read_to_string(&m).unwrap_or_default();
            let doc: String = text
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .collect::<Vec<_>>()
                .join("\n");
            if doc.is_empty() || !doc.contains("May use:") {
                missing.push(rel(&m));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these mod.rs files do not open with a `//!` paragraph saying what lives there and what it \
         may use (\"May use: …\"): {missing:?}"
    );
}

#[test]
fn one_decision_and_one_guard() {
    // Requests are decided in the gate only (and live connections re-decided where they are
    // re-checked): a front door that called the policy itself could skip the gate's checks.
    const DECIDERS: &[&str] = &["src/gate/mod.rs", "src/runtime/reload.rs"];
    // Whether a write came from castellan's own page is judged by the guard only.
    const GUARD: &str = "src/web/guard.rs";
    let mut broken = Vec::new();
    for (module, path) in library() {
        if module == "policy" || OUTSIDE.contains(&module.as_str()) {
            continue;
        }
        let file = rel(&path);
        for (n, line) in code_lines(&path) {
            if line.contains(".decide(") && !DECIDERS.contains(&file.as_str()) {
                broken.push(format!(
                    "{file}:{n}: only the gate decides requests (gate::admit): {}",
                    line.trim()
                ));
            }
            if line.to_ascii_lowercase().contains("sec-fetch-site") && file != GUARD {
                broken.push(format!(
                    "{file}:{n}: only web::guard::check judges where a write came from: {}",
                    line.trim()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn unit_test_files_are_compiled_only_for_tests() {
    // The walls skip `tests.rs` files, so each must really be test-only code.
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut broken = Vec::new();
    for path in files
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "tests.rs"))
    {
        let parent = path.parent().unwrap();
        // Declared in the folder's mod.rs, or in the file named after the folder
        // (`web/failure.rs` for `web/failure/tests.rs`).
        let declared = ["mod.rs", "lib.rs"]
            .iter()
            .map(|f| parent.join(f))
            .chain([parent.with_extension("rs")])
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .any(|text| text.contains("#[cfg(test)]\nmod tests;"));
        if !declared {
            broken.push(format!(
                "{}: declare it as `#[cfg(test)]\nmod tests;` in its folder's mod.rs (or FOLDER.rs)",
                rel(path)
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
