use super::*;

fn entry() -> SegmentEntry {
    let b = |id, rows| BinlogEntry {
        log_id: id,
        entries_num: rows,
        log_path: String::new(),
        log_size: 1000,
    };
    SegmentEntry {
        segment_id: 7001,
        partition_id: 7002,
        segment_level: 2,
        num_rows: 30,
        storage_version: 2,
        binlogs: vec![
            FieldBinlog {
                field_id: 0,
                child_fields: vec![0, 1, 100, 101],
                binlogs: vec![b(11, 10), b(12, 20)],
            },
            FieldBinlog {
                field_id: 102,
                child_fields: vec![102],
                binlogs: vec![b(13, 30)],
            },
        ],
    }
}

#[test]
fn every_format_version_round_trips() {
    for version in 0..=NEWEST_FORMAT_VERSION {
        let bytes = encode(&entry(), version).unwrap();
        let got = decode(&bytes, version).unwrap_or_else(|e| panic!("format {version}: {e}"));
        let mut want = entry();
        if version < 4 {
            // Child fields exist from format 4 only.
            want.binlogs.iter_mut().for_each(|g| g.child_fields.clear());
        }
        assert_eq!(got, want, "format {version}");
    }
}

#[test]
fn the_wrong_format_version_is_detected() {
    let bytes = encode(&entry(), 4).unwrap();
    let e = decode(&bytes, 2).unwrap_err();
    assert!(
        e.contains("format-2") && (e.contains("wrong format version") || e.contains("not a")),
        "{e}"
    );
    assert!(decode(&bytes, 5).unwrap_err().contains("newer than this build reads"));
    assert!(decode(&bytes[..bytes.len() / 2], 4)
        .unwrap_err()
        .contains("not a format-4"));
}
