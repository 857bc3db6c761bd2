//! Timestamps in the formats the API server expects. Reads the system clock, nothing else.

use k8s_openapi::jiff::Timestamp;

/// RFC 3339 with whole seconds, as in Pod and Node status (`metav1.Time`).
pub fn now() -> String {
    let t = Timestamp::now();
    Timestamp::from_second(t.as_second()).unwrap().to_string()
}

/// RFC 3339 with microseconds, as `Lease.spec.renewTime` (`metav1.MicroTime`) requires.
pub fn now_micro() -> String {
    let t = Timestamp::now();
    format!("{}.{:06}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_microsecond())
}

/// Whole seconds since the Unix epoch.
pub fn now_seconds() -> i64 {
    Timestamp::now().as_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_has_whole_seconds_and_now_micro_six_digits() {
        let s = now();
        assert!(s.ends_with('Z') && !s.contains('.'), "{s}");
        assert!(s.parse::<Timestamp>().is_ok());
        let m = now_micro();
        let frac = m.rsplit_once('.').unwrap().1;
        assert_eq!(frac.len(), 7, "{m}"); // 6 digits + Z
        assert!(m.parse::<Timestamp>().is_ok());
    }
}
