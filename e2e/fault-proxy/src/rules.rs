//! Rules: which requests (HTTP) or connections (TCP) get which fault, how often.
//!
//! One rule per string, words separated by spaces: the fault first, then filters.
//! `slowdown method=GET key=/insert_log/ fraction=0.05`, `cut key=manifest first=2`,
//! `refuse first=3`, `delay:200`, `status:500 method=PUT skip=1 first=1`.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// What happens to a request or connection a rule fires on.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Fault {
    /// An S3 error response, not forwarded: 503 `SlowDown`.
    SlowDown,
    /// An error response with this status, not forwarded (500 `InternalError`, 503 ...).
    Status(u16),
    /// The connection is reset before any answer; the request never reaches the server.
    Reset,
    /// The request reaches the server, its answer is lost: the connection is reset after the
    /// server answered (a write that was applied but whose client saw an error).
    LostAnswer,
    /// The headers and half of the body are sent, then the connection closes.
    Cut,
    /// The answer is delayed this long, then forwarded.
    Delay(Duration),
    /// Nothing is answered for this long, then the connection closes.
    Hang(Duration),
    /// TCP: the connection is closed as soon as it is accepted.
    Refuse,
    /// TCP: the connection is closed after this many bytes from the server.
    CutAfter(u64),
}

/// A fault and the requests it applies to.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub text: String,
    pub fault: Fault,
    /// HTTP method, upper case; `None` matches all.
    pub method: Option<String>,
    /// A substring of the request target (path and query); `None` matches all.
    pub key: Option<String>,
    /// Matching requests passed over before the rule may fire.
    pub skip: u64,
    /// Fires at most this many times.
    pub first: Option<u64>,
    /// Fires on this fraction of the matching requests (seeded, so runs repeat).
    pub fraction: f64,
}

#[derive(Debug, PartialEq)]
pub struct RuleError(pub String);

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuleError {}

fn millis(v: &str, text: &str) -> Result<Duration, RuleError> {
    v.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| RuleError(format!("rule {text:?}: {v:?} is not a number of milliseconds")))
}

fn fault(word: &str, text: &str) -> Result<Fault, RuleError> {
    let (name, arg) = word.split_once(':').unwrap_or((word, ""));
    Ok(match (name, arg) {
        ("slowdown", "") => Fault::SlowDown,
        ("status", s) => Fault::Status(
            s.parse()
                .ok()
                .filter(|c| (400..600).contains(c))
                .ok_or_else(|| RuleError(format!("rule {text:?}: status:{s} is not an HTTP error status")))?,
        ),
        ("reset", "") => Fault::Reset,
        ("lost-answer", "") => Fault::LostAnswer,
        ("cut", "") => Fault::Cut,
        ("delay", ms) => Fault::Delay(millis(ms, text)?),
        ("hang", ms) => Fault::Hang(millis(ms, text)?),
        ("refuse", "") => Fault::Refuse,
        ("cut-after", n) => Fault::CutAfter(
            n.parse()
                .map_err(|_| RuleError(format!("rule {text:?}: cut-after:{n} is not a byte count")))?,
        ),
        _ => {
            return Err(RuleError(format!(
                "rule {text:?}: unknown fault {word:?} (slowdown, status:CODE, reset, lost-answer, cut, delay:MS, \
                 hang:MS, refuse, cut-after:BYTES)"
            )))
        }
    })
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let mut words = text.split_whitespace();
        let first_word = words
            .next()
            .ok_or_else(|| RuleError("an empty rule: it starts with the fault".into()))?;
        let mut rule = Rule {
            text: text.trim().to_owned(),
            fault: fault(first_word, text)?,
            method: None,
            key: None,
            skip: 0,
            first: None,
            fraction: 1.0,
        };
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| RuleError(format!("rule {text:?}: {w:?} is not name=value")))?;
            let number = || {
                v.parse::<u64>()
                    .map_err(|_| RuleError(format!("rule {text:?}: {k}={v} is not a count")))
            };
            match k {
                "method" => rule.method = Some(v.to_ascii_uppercase()),
                "key" => rule.key = Some(v.to_owned()),
                "skip" => rule.skip = number()?,
                "first" => rule.first = Some(number()?),
                "fraction" => {
                    rule.fraction = v
                        .parse()
                        .ok()
                        .filter(|f| (0.0..=1.0).contains(f))
                        .ok_or_else(|| RuleError(format!("rule {text:?}: fraction={v} is not in 0..1")))?
                }
                _ => {
                    return Err(RuleError(format!(
                        "rule {text:?}: unknown filter {k:?} (method, key, skip, first, fraction)"
                    )))
                }
            }
        }
        Ok(rule)
    }

    fn matches(&self, method: &str, target: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && self.key.as_deref().is_none_or(|k| target.contains(k))
    }
}

/// How often each rule matched and fired.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleCount {
    pub rule: String,
    pub matched: u64,
    pub fired: u64,
}

/// The rules in force with their counts, and a seeded generator for `fraction`.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    counts: Vec<RuleCount>,
    rng: SplitMix64,
    pub requests: u64,
}

impl Rules {
    pub fn new(rules: Vec<Rule>, seed: u64) -> Self {
        let counts = rules
            .iter()
            .map(|r| RuleCount {
                rule: r.text.clone(),
                ..RuleCount::default()
            })
            .collect();
        Self {
            rules,
            counts,
            rng: SplitMix64(seed),
            requests: 0,
        }
    }

    /// The fault for one request (TCP: method and target are empty), counting it. The first
    /// rule that matches and fires wins; a rule that matches but does not fire lets the next
    /// rules try.
    pub fn decide(&mut self, method: &str, target: &str) -> Option<Fault> {
        self.requests += 1;
        for (rule, count) in self.rules.iter().zip(self.counts.iter_mut()) {
            if !rule.matches(method, target) {
                continue;
            }
            count.matched += 1;
            let draw = self.rng.next_fraction();
            let eligible = count.matched > rule.skip && rule.first.is_none_or(|n| count.fired < n);
            if eligible && draw < rule.fraction {
                count.fired += 1;
                return Some(rule.fault.clone());
            }
        }
        None
    }

    pub fn counts(&self) -> Vec<RuleCount> {
        self.counts.clone()
    }

    pub fn fired(&self) -> u64 {
        self.counts.iter().map(|c| c.fired).sum()
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same faults.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_faults_and_filters() {
        let r = Rule::parse("slowdown method=get key=/insert_log/ skip=1 first=2 fraction=0.5").unwrap();
        assert_eq!(r.fault, Fault::SlowDown);
        assert_eq!(r.method.as_deref(), Some("GET"));
        assert_eq!(r.key.as_deref(), Some("/insert_log/"));
        assert_eq!((r.skip, r.first, r.fraction), (1, Some(2), 0.5));
        assert_eq!(
            Rule::parse("delay:250").unwrap().fault,
            Fault::Delay(Duration::from_millis(250))
        );
        assert_eq!(Rule::parse("status:500").unwrap().fault, Fault::Status(500));
        assert_eq!(Rule::parse("cut-after:4096").unwrap().fault, Fault::CutAfter(4096));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (text, phrase) in [
            ("", "empty rule"),
            ("explode", "unknown fault \"explode\""),
            ("status:200", "not an HTTP error status"),
            ("delay:soon", "not a number of milliseconds"),
            ("reset first", "is not name=value"),
            ("reset fraction=2", "not in 0..1"),
            ("reset colour=red", "unknown filter \"colour\""),
        ] {
            let e = Rule::parse(text).unwrap_err();
            assert!(e.0.contains(phrase), "{text:?}: {e}");
        }
    }

    #[test]
    fn skip_and_first_bound_when_a_rule_fires() {
        let mut rules = Rules::new(vec![Rule::parse("reset key=manifest skip=1 first=2").unwrap()], 1);
        let got: Vec<bool> = (0..5)
            .map(|_| rules.decide("PUT", "/b/x/manifest.json").is_some())
            .collect();
        assert_eq!(got, [false, true, true, false, false]);
        assert_eq!(
            rules.decide("PUT", "/b/x/part-1.parquet"),
            None,
            "another key does not match"
        );
        assert_eq!(rules.counts()[0].matched, 5);
        assert_eq!((rules.fired(), rules.requests), (2, 6));
    }

    #[test]
    fn a_fraction_is_seeded_and_close_to_its_rate() {
        let run = |seed| {
            let mut rules = Rules::new(vec![Rule::parse("slowdown fraction=0.1").unwrap()], seed);
            (0..10_000)
                .map(|_| rules.decide("GET", "/k").is_some())
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "the same seed gives the same faults");
        assert_ne!(a, run(8));
        let fired = a.iter().filter(|f| **f).count();
        assert!((800..1200).contains(&fired), "{fired} of 10,000 at 10%");
    }

    #[test]
    fn the_first_rule_that_fires_wins_and_a_rule_that_does_not_fire_lets_the_next_try() {
        let mut rules = Rules::new(
            vec![
                Rule::parse("cut method=GET first=1").unwrap(),
                Rule::parse("status:503").unwrap(),
            ],
            3,
        );
        assert_eq!(rules.decide("GET", "/a"), Some(Fault::Cut));
        assert_eq!(rules.decide("GET", "/a"), Some(Fault::Status(503)));
        assert_eq!(rules.decide("PUT", "/a"), Some(Fault::Status(503)));
    }
}
