//! docs/troubleshooting.md covers every condition reason the operator sets: each `reason`
//! constant of `operator/src/state.rs` is named there (read from the source, so a new reason
//! without a doc entry fails here).

#[test]
fn troubleshooting_names_every_reason() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let src = std::fs::read_to_string(format!("{root}/operator/src/state.rs")).unwrap();
    let doc = std::fs::read_to_string(format!("{root}/docs/troubleshooting.md")).unwrap();
    let reasons: Vec<&str> = src
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split_once(": &str = \"").map(|(_, v)| v.trim_end_matches("\";")))
        .collect();
    assert!(reasons.len() >= 15, "found only {reasons:?}");
    let missing: Vec<&&str> = reasons.iter().filter(|r| !doc.contains(&format!("`{r}`"))).collect();
    assert!(missing.is_empty(), "docs/troubleshooting.md does not name {missing:?}");
}
