//! Leader election with a `coordination.k8s.io/v1` Lease, so that several operator replicas
//! are safe: only the holder reconciles, the others stand by.
//!
//! A follower judges expiry by its own clock, from the moment it last saw the Lease record
//! change (as client-go does), so the nodes' clocks need not agree. The leader renews every
//! `retry`; when it cannot renew for `renew_deadline` (shorter than the lease duration) it
//! stops, so two leaders never overlap. Writes carry the resourceVersion, so two candidates
//! racing for a free Lease cannot both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica (the Pod name).
    pub identity: String,
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl LeaseConfig {
    /// With other timings than client-go's defaults: `duration` > `renew_deadline` > `retry`
    /// ≥ 1 s (client-go's own rules: a leader gives up before its Lease can expire, and tries
    /// more than once before it gives up).
    pub fn with_timing(mut self, duration: u64, renew_deadline: u64, retry: u64) -> Result<Self, String> {
        if !(duration > renew_deadline && renew_deadline > retry && retry >= 1) {
            return Err(format!(
                "--lease-duration-seconds ({duration}) must be greater than --renew-deadline-seconds ({renew_deadline}), \
                 which must be greater than --retry-period-seconds ({retry}), which must be at least 1"
            ));
        }
        self.duration = Duration::from_secs(duration);
        self.renew_deadline = Duration::from_secs(renew_deadline);
        self.retry = Duration::from_secs(retry);
        Ok(self)
    }

    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(name: String, namespace: String, identity: String) -> Self {
        Self {
            name,
            namespace,
            identity,
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// The parts of a Lease that say who holds it and whether it is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub duration_seconds: Option<i32>,
}

impl Record {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            duration_seconds: spec.lease_duration_seconds,
        }
    }
}

/// A record as this replica last saw it change, and when (by the local clock).
#[derive(Clone, Debug)]
pub struct Observation {
    pub record: Record,
    pub at: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet.
    Create,
    /// Free, released, or expired: take it over.
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Held by someone else for at most `remaining` more.
    Follow { holder: String, remaining: Duration },
}

/// What to do with the Lease now. `seen` must be the observation updated by [`observe`].
pub fn next_step(
    current: Option<&Record>,
    seen: Option<&Observation>,
    me: &str,
    default: Duration,
    now: Instant,
) -> Step {
    let Some(record) = current else {
        return Step::Create;
    };
    let Some(holder) = record.holder.as_deref() else {
        return Step::Acquire;
    };
    if holder == me {
        return Step::Renew;
    }
    let duration = record
        .duration_seconds
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(default);
    let elapsed = match seen {
        Some(o) if &o.record == record => now.saturating_duration_since(o.at),
        _ => Duration::ZERO,
    };
    if elapsed >= duration {
        Step::Acquire
    } else {
        Step::Follow {
            holder: holder.to_owned(),
            remaining: duration - elapsed,
        }
    }
}

/// The observation after reading `current` at `now`: the clock restarts only when the record
/// changed (a live leader changes renewTime on every renewal).
pub fn observe(seen: Option<Observation>, current: Option<&Record>, now: Instant) -> Option<Observation> {
    let current = current?;
    match seen {
        Some(o) if &o.record == current => Some(o),
        _ => Some(Observation {
            record: current.clone(),
            at: now,
        }),
    }
}

/// The Lease spec after this replica acquires or renews it.
pub fn claimed(previous: Option<&LeaseSpec>, me: &str, duration: Duration, now: Timestamp) -> LeaseSpec {
    let prev = previous.cloned().unwrap_or_default();
    let ours = prev.holder_identity.as_deref() == Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
        acquire_time: if ours {
            prev.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        // As client-go counts: every change of holder, a take-over after a release included.
        lease_transitions: Some(prev.lease_transitions.unwrap_or(0) + i32::from(!ours && previous.is_some())),
        ..prev
    }
}

/// The Lease spec after the holder lets it go on shutdown: a follower takes over at once.
pub fn released(previous: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        ..previous.clone()
    }
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    Following(String),
    /// Someone wrote the Lease between our read and write: read again.
    Raced,
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    seen: Option<Observation>,
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            seen: None,
        }
    }

    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let lease = self.api.get_opt(&self.cfg.name).await?;
        let record = lease.as_ref().map(Record::of);
        let now = Instant::now();
        self.seen = observe(self.seen.take(), record.as_ref(), now);
        let step = next_step(
            record.as_ref(),
            self.seen.as_ref(),
            &self.cfg.identity,
            self.cfg.duration,
            now,
        );
        let spec = |prev: Option<&LeaseSpec>| claimed(prev, &self.cfg.identity, self.cfg.duration, Timestamp::now());
        let written = match (step, lease) {
            (Step::Follow { holder, .. }, _) => return Ok(Attempt::Following(holder)),
            (Step::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec(None)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Step::Acquire | Step::Renew, Some(mut lease)) => {
                lease.spec = Some(spec(lease.spec.as_ref()));
                // The read's resourceVersion stays in metadata: a concurrent write gives 409.
                self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
            Err(e) => Err(e),
        }
    }

    /// Returns once this replica holds the Lease.
    pub async fn acquire(&mut self) {
        let mut last_holder = None;
        loop {
            match self.attempt().await {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became the leader");
                    return;
                }
                Ok(Attempt::Following(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.cfg.name, leader = %holder, "standing by; another replica leads");
                        last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Raced) => {}
                Err(e) => tracing::warn!(lease = %self.cfg.name, error = %e, "cannot read or write the Lease"),
            }
            tokio::time::sleep(self.cfg.retry).await;
        }
    }

    /// Renews the Lease until leadership is lost; returns why.
    pub async fn hold(&mut self) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry).await;
            match self.attempt().await {
                Ok(Attempt::Leading) => renewed = Instant::now(),
                Ok(Attempt::Following(holder)) => return format!("the Lease is now held by {holder}"),
                Ok(Attempt::Raced) => {}
                Err(e) => tracing::warn!(lease = %self.cfg.name, error = %e, "cannot renew the Lease"),
            }
            if renewed.elapsed() >= self.cfg.renew_deadline {
                return format!("not renewed for {:?}", self.cfg.renew_deadline);
            }
        }
    }

    /// Lets the Lease go (on shutdown) if this replica still holds it.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease
            .spec
            .as_ref()
            .filter(|s| s.holder_identity.as_deref() == Some(&self.cfg.identity))
        else {
            return;
        };
        lease.spec = Some(released(spec));
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.cfg.name, "released the Lease"),
            Err(e) => {
                tracing::warn!(lease = %self.cfg.name, error = %e, "cannot release the Lease; it expires by itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn lease_timings_follow_client_gos_rules() {
        let base = || LeaseConfig::new("l".into(), "ns".into(), "me".into());
        let c = base().with_timing(30, 20, 4).unwrap();
        assert_eq!(
            (c.duration, c.renew_deadline, c.retry),
            (Duration::from_secs(30), Duration::from_secs(20), Duration::from_secs(4))
        );
        for (d, r, p) in [(10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)] {
            let e = base().with_timing(d, r, p).unwrap_err();
            assert!(e.contains("--renew-deadline-seconds"), "{e}");
        }
    }

    fn rec(holder: Option<&str>, renew: &str) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            renew_time: Some(renew.to_owned()),
            duration_seconds: Some(15),
        }
    }

    #[test]
    fn a_missing_or_free_lease_is_taken() {
        let t0 = Instant::now();
        assert_eq!(next_step(None, None, "me", D, t0), Step::Create);
        let free = rec(None, "t1");
        assert_eq!(next_step(Some(&free), None, "me", D, t0), Step::Acquire);
        let ours = rec(Some("me"), "t1");
        assert_eq!(next_step(Some(&ours), None, "me", D, t0), Step::Renew);
    }

    #[test]
    fn another_holder_is_followed_until_its_record_stops_changing_for_the_duration() {
        let t0 = Instant::now();
        let r1 = rec(Some("other"), "t1");
        let seen = observe(None, Some(&r1), t0);
        assert_eq!(
            next_step(Some(&r1), seen.as_ref(), "me", D, t0),
            Step::Follow {
                holder: "other".into(),
                remaining: D
            }
        );
        // The holder renews at t0+10s: the clock restarts.
        let r2 = rec(Some("other"), "t2");
        let seen = observe(seen, Some(&r2), t0 + Duration::from_secs(10));
        let at = t0 + Duration::from_secs(20);
        let seen = observe(seen, Some(&r2), at);
        assert_eq!(
            next_step(Some(&r2), seen.as_ref(), "me", D, at),
            Step::Follow {
                holder: "other".into(),
                remaining: Duration::from_secs(5)
            }
        );
        // No renewal for a whole lease duration: expired, whatever renewTime says.
        let at = t0 + Duration::from_secs(25);
        let seen = observe(seen, Some(&r2), at);
        assert_eq!(next_step(Some(&r2), seen.as_ref(), "me", D, at), Step::Acquire);
    }

    #[test]
    fn the_lease_duration_of_the_record_wins_over_the_default() {
        let t0 = Instant::now();
        let mut r = rec(Some("other"), "t1");
        r.duration_seconds = Some(1);
        let seen = observe(None, Some(&r), t0);
        let at = t0 + Duration::from_secs(1);
        assert_eq!(next_step(Some(&r), seen.as_ref(), "me", D, at), Step::Acquire);
        r.duration_seconds = None;
        assert!(matches!(
            next_step(Some(&r), seen.as_ref(), "me", D, at),
            Step::Follow { .. }
        ));
    }

    #[test]
    fn claiming_counts_transitions_and_keeps_the_acquire_time_on_renewal() {
        let t1: Timestamp = "2026-11-27T07:00:00Z".parse().unwrap();
        let t2: Timestamp = "2026-11-27T07:00:02Z".parse().unwrap();
        let first = claimed(None, "a", D, t1);
        assert_eq!(first.holder_identity.as_deref(), Some("a"));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(15));
        let renewed = claimed(Some(&first), "a", D, t2);
        assert_eq!(renewed.acquire_time, first.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(t2)));
        assert_eq!(renewed.lease_transitions, Some(0));
        let taken = claimed(Some(&renewed), "b", D, t2);
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.acquire_time, Some(MicroTime(t2)));
        assert_eq!(taken.lease_transitions, Some(1));
        // A take-over after a release is a transition too.
        let free = released(&taken);
        assert_eq!(free.holder_identity, None);
        assert_eq!(free.lease_duration_seconds, Some(1));
        assert_eq!(claimed(Some(&free), "a", D, t2).lease_transitions, Some(2));
        assert_eq!(
            Record::of(&Lease {
                metadata: Default::default(),
                spec: Some(free)
            })
            .holder,
            None
        );
    }
}
