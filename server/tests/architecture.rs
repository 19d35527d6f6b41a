//! The shape of `server/src` that ARCHITECTURE.md promises: layers that import only downwards
//! (so no import circle can form between the modules), and functions a reader can hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The server's modules, lowest first. A module may use the ones before it, never after.
const LAYERS: [&str; 8] = [
    "core",
    "interest",
    "client",
    "authority",
    "demo",
    "app",
    "cluster",
    "runtime",
];

/// Longest function (lines from `fn` to its closing brace) allowed in `server/src`.
const FN_LINES_MAX: usize = 80;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for lib.rs and main.rs, the crate's roots).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// Every `crate::<module>` a file names in code (comments may point anywhere).
fn crate_refs(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(&mine) = rank.get(module.as_str()) else {
            panic!(
                "{}: module `{module}` is not in LAYERS; place it",
                file.display()
            );
        };
        let text = std::fs::read_to_string(file).expect("readable");
        for used in crate_refs(&text) {
            if let Some(&theirs) = rank.get(used.as_str())
                && theirs > mine
            {
                wrong.push(format!("{} ({module}) uses crate::{used}", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports must point down the layers {LAYERS:?}:\n{}",
        wrong.join("\n")
    );
}

/// Functions over [`FN_LINES_MAX`] lines, by the same rule the project's review uses: from a
/// line opening `fn` to the closing brace at the same indentation.
fn long_functions(text: &str) -> Vec<(usize, usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let head = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("async ")
            .trim_start_matches("const ");
        let Some(rest) = head.strip_prefix("fn ") else {
            continue;
        };
        if line.trim_end().ends_with(';') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{}}}", " ".repeat(indent));
        let end = lines[i + 1..]
            .iter()
            .position(|l| l.trim_end() == close)
            .map_or(lines.len(), |p| i + 1 + p);
        let len = end - i + 1;
        if len > FN_LINES_MAX {
            out.push((i + 1, len, name));
        }
    }
    out
}

#[test]
fn no_function_in_the_server_is_longer_than_a_screen() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        for (line, len, name) in long_functions(&text) {
            long.push(format!("{}:{line} {name}: {len} lines", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "functions over {FN_LINES_MAX} lines (split them by step):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let long_fn = format!("fn big() {{\n{}}}\n", "    x();\n".repeat(FN_LINES_MAX));
    assert_eq!(
        long_functions(&long_fn).len(),
        1,
        "an over-long function is found"
    );
    assert!(long_functions("fn small() {\n    x();\n}\n").is_empty());
    assert_eq!(
        crate_refs("use crate::runtime::up;\n/// [`crate::app`]\nlet a = crate::core::x;"),
        ["runtime", "core"],
        "code references count, doc references do not"
    );
}
