use super::*;
use crate::plan::{LEVEL_L0, STATE_FLUSHED, STATE_GROWING, STORAGE_V2};

fn seg(id: i64, partition: i64, storage_version: i64) -> SegmentInfo {
    SegmentInfo {
        segment_id: id,
        partition_id: partition,
        num_rows: 10,
        state: STATE_FLUSHED,
        level: 2,
        storage_version,
    }
}

#[test]
fn one_kind_of_segment_picks_its_rules() {
    assert_eq!(rules(&[]).unwrap(), Rules::V1Export);
    assert_eq!(rules(&[seg(1, 7, 0), seg(2, 7, 0)]).unwrap(), Rules::V1Export);
    assert_eq!(rules(&[seg(1, 7, 3), seg(2, 8, 3)]).unwrap(), Rules::V3);
    // StorageV2 outputs are committed into the segments as V3 ones are: the same rules.
    assert_eq!(rules(&[seg(1, 7, 3), seg(2, 7, STORAGE_V2)]).unwrap(), Rules::V3);
    assert_eq!(rules(&[seg(2, 7, STORAGE_V2)]).unwrap(), Rules::V3);
    assert!(rules(&[seg(1, 7, 0), seg(2, 7, STORAGE_V2)]).is_err());
}

#[test]
fn segments_that_are_not_backfilled_do_not_mix_the_rules() {
    let growing_v1 = SegmentInfo {
        state: STATE_GROWING,
        ..seg(1, 7, 0)
    };
    let l0_v1 = SegmentInfo {
        level: LEVEL_L0,
        ..seg(2, 7, 0)
    };
    let empty_v1 = SegmentInfo {
        num_rows: 0,
        ..seg(3, 7, 0)
    };
    let v3 = seg(4, 7, 3);
    assert_eq!(rules(&[growing_v1, l0_v1, empty_v1, v3]).unwrap(), Rules::V3);
}

#[test]
fn a_collection_mixing_v1_and_v3_segments_is_refused_with_both_named() {
    let e = rules(&[seg(11, 7, 0), seg(12, 8, 0), seg(21, 9, 3)]).unwrap_err();
    assert!(e.kind.is_permanent(), "{e}");
    for part in [
        "StorageV1 segments (2 segment(s), e.g. 11, 12 in partition(s) [7, 8])",
        "StorageV3 segments (1 segment(s), e.g. 21 in partition(s) [9])",
        "must not exist",
        "must exist",
        "one partition at a time (spec.milvus.partition): each holds one kind",
    ] {
        assert!(e.message.contains(part), "{part:?} missing in {}", e.message);
    }
    let e = rules(&[seg(11, 7, 0), seg(12, 8, 0), seg(21, 8, 3)]).unwrap_err();
    assert!(e.message.contains("partition(s) [8] hold both kinds"), "{}", e.message);
}

#[test]
fn the_newest_manifest_is_the_highest_numbered() {
    let o = |k: &str| ObjectMeta { key: k.into(), size: 1 };
    let listing = [
        o("b/_metadata/manifest-2.avro"),
        o("b/_metadata/manifest-10.avro"),
        o("b/_metadata/manifest-9.avro"),
        o("b/_metadata/manifest-x.avro"),
        o("b/_metadata/other.json"),
    ];
    assert_eq!(
        newest_manifest(&listing),
        Some((10, "b/_metadata/manifest-10.avro".to_owned()))
    );
    assert_eq!(newest_manifest(&listing[3..]), None);
}
