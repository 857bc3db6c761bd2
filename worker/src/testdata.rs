//! Test data shared with other projects: `../shared/fixtures` beside the repository (CI puts
//! it there), or `MB_SHARED_FIXTURES`. Test-only.

use std::path::PathBuf;

use serde::Deserialize;

pub fn shared_fixture(rel: &str) -> PathBuf {
    let root = std::env::var_os("MB_SHARED_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    let p = root.join(rel);
    assert!(
        p.exists(),
        "test fixture {} is missing (set MB_SHARED_FIXTURES)",
        p.display()
    );
    p
}

/// `milvus-storage-v3/expected.json`: segments the official library wrote, with their PKs.
#[derive(Deserialize)]
pub struct V3Expected {
    pub segments: Vec<V3ExpectedSegment>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V3ExpectedSegment {
    pub segment_id: i64,
    pub base_path: String,
    pub pk_field_id: i64,
    pub pk_type: String,
    pub num_rows: u64,
    pub manifest_version: i64,
    pub manifest: ExpectedManifest,
    pub pks: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
pub struct ExpectedManifest {
    pub column_groups: Vec<ExpectedGroup>,
}

#[derive(Deserialize)]
pub struct ExpectedGroup {
    pub columns: Vec<String>,
    pub files: Vec<ExpectedFile>,
}

#[derive(Deserialize)]
pub struct ExpectedFile {
    pub path: String,
    pub start_index: i64,
    pub end_index: i64,
}

impl V3Expected {
    pub fn load() -> Self {
        let text = std::fs::read_to_string(shared_fixture("milvus-storage-v3/expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}
