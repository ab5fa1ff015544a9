//! The import direction the README's "Layout of the code" states:
//! `daemon` → `http` → `node` → `cluster` → `store`. A module never
//! imports one above it, so there is no import circle.

use std::path::Path;

/// Every `crate::NAME` a source file (or directory of them) mentions,
/// comments included: a doc link upward is a dependency of the reader.
fn imports(path: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("read src dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            found.extend(imports(&p));
        }
        return found;
    }
    let text = std::fs::read_to_string(path).expect("read source");
    for (i, _) in text.match_indices("crate::") {
        let name: String = text[i + 7..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        found.push((path.display().to_string(), name));
    }
    found
}

fn assert_below(module: &str, above: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let file = root.join(format!("{module}.rs"));
    let path = if file.exists() {
        file
    } else {
        root.join(module)
    };
    assert!(path.exists(), "{} is missing", path.display());
    for (file, name) in imports(&path) {
        assert!(
            !above.contains(&name.as_str()),
            "{file} imports crate::{name}, which is above it"
        );
    }
}

#[test]
fn imports_go_one_way() {
    assert_below("store", &["daemon", "http", "node", "cluster", "watch"]);
    assert_below("cluster", &["daemon", "http", "node", "watch"]);
    assert_below("watch", &["daemon", "http", "node", "cluster"]);
    assert_below("node", &["daemon", "http"]);
    assert_below("http", &["daemon"]);
}
