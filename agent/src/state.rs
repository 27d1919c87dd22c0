//! The agent's state and its rules: observations in, decisions out.
//!
//! Every observation goes to the policy (unless an override pins `k`); a proposal becomes a
//! decision when it differs from the split in force, has been the same on `confirm` consecutive
//! observations and the previous decision is at least `min_dwell` old. The first decision is made
//! at the first observation, without confirmation or dwell; so is the first one after an
//! override is released (issued even when `k` equals the pinned one, so the decision in force
//! says the policy is back in control).
//!
//! Epochs increase by one per decision, from a base taken off the wall clock when the agent
//! starts ([`epoch_base`]: its start time in milliseconds times 10⁶), so a restarted agent
//! numbers above everything it issued before without being told. Nothing a subscriber says moves
//! the counter: a `last_epoch` above it (a clock set back, or a forged value) is only logged.
//!
//! Time comes in as an argument, so the rules are tested without sleeping. Decisions go out
//! through a `watch` channel sent under the state's lock, so every subscriber sees them in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use splitinfer_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;
use crate::observation::Observation;
use crate::policy::Policy;
use crate::timeline::Timeline;

/// The `policy` of a decision made by an override.
pub const OVERRIDE: &str = "override";

/// When a proposal may become a decision.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub min_dwell: Duration,
    /// Consecutive observations a proposal must hold for (at least 1).
    pub confirm: u32,
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The latest decision a subscriber acknowledged, and when.
#[derive(Debug, Clone, Copy, Default)]
struct Ack {
    epoch: u64,
    k: u32,
    unix_ms: u64,
}

#[derive(Debug)]
struct Subscriber {
    role: pb::Role,
    connected: bool,
    /// Which subscription (a resubscription under the same name replaces the old one, whose
    /// stream must then not mark the new one disconnected).
    generation: u64,
    acked: Option<Ack>,
    /// Cancelled when a newer subscription under the same name replaces this one.
    replaced: CancellationToken,
}

/// What a new subscription gets: the decision in force, then every new one from `decisions`.
pub struct Subscription {
    pub generation: u64,
    pub current: Option<pb::Decision>,
    pub decisions: watch::Receiver<Option<pb::Decision>>,
    pub replaced: CancellationToken,
}

pub struct AgentState {
    policy: Box<dyn Policy>,
    n_layers: u32,
    rules: Rules,
    /// The highest epoch issued (0: none yet).
    epoch: u64,
    /// The first decision is `epoch_base + 1`.
    epoch_base: u64,
    current: Option<pb::Decision>,
    /// When the last decision that was not a re-issue was made (the dwell starts there).
    last_change: Option<Instant>,
    /// The latest proposal and on how many consecutive observations it was made.
    candidate: Option<(u32, u32)>,
    observation: Option<Observation>,
    observations: u64,
    pinned: Option<u32>,
    /// An override was released: the next observation decides at once.
    released: bool,
    subscribers: BTreeMap<String, Subscriber>,
    next_generation: u64,
    history: VecDeque<pb::Decision>,
    history_cap: usize,
    stats_connected: bool,
    decisions: watch::Sender<Option<pb::Decision>>,
    /// The last few minutes, for the dashboard.
    timeline: Timeline,
}

impl AgentState {
    pub fn new(policy: Box<dyn Policy>, n_layers: u32, rules: Rules, history_cap: usize) -> Self {
        Self {
            policy,
            n_layers,
            rules: Rules { confirm: rules.confirm.max(1), ..rules },
            epoch: 0,
            epoch_base: epoch_base(SystemTime::now()),
            current: None,
            last_change: None,
            candidate: None,
            observation: None,
            observations: 0,
            pinned: None,
            released: false,
            subscribers: BTreeMap::new(),
            next_generation: 0,
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            stats_connected: false,
            decisions: watch::channel(None).0,
            timeline: Timeline::default(),
        }
    }

    /// Numbers decisions from `base + 1` instead of the clock's base (tests, replays).
    pub fn with_epoch_base(mut self, base: u64) -> Self {
        self.epoch_base = base;
        self
    }

    pub fn current(&self) -> Option<&pb::Decision> {
        self.current.as_ref()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn stats_connected(&self) -> bool {
        self.stats_connected
    }

    pub fn set_stats_connected(&mut self, up: bool) {
        self.stats_connected = up;
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Where the statistics and the UEs' reports are recorded (decisions record themselves).
    pub fn timeline_mut(&mut self) -> &mut Timeline {
        &mut self.timeline
    }

    /// One observation: returns the decision it led to, if any.
    pub fn observe(&mut self, obs: Observation, now: Instant) -> Option<pb::Decision> {
        self.observations += 1;
        self.observation = Some(obs);
        if self.pinned.is_some() {
            self.candidate = None;
            return None;
        }
        let obs = self.observation.as_ref().expect("just set");
        let current_k = self.current.as_ref().map(decision_k);
        let p = self.policy.decide(obs, current_k);
        let streak = match self.candidate {
            Some((k, n)) if k == p.k => n + 1,
            _ => 1,
        };
        self.candidate = Some((p.k, streak));
        let policy = self.policy.name().to_string();
        if self.current.is_none() {
            return Some(self.issue(p.k, p.reason, policy, false, Some(now)));
        }
        if self.released {
            self.released = false;
            return Some(self.issue(p.k, format!("override released; {}", p.reason), policy, false, Some(now)));
        }
        if Some(p.k) == current_k {
            return None;
        }
        if streak < self.rules.confirm {
            tracing::debug!(k = p.k, streak, confirm = self.rules.confirm, "proposal awaiting confirmation");
            return None;
        }
        if let Some(t) = self.last_change {
            let since = now.saturating_duration_since(t);
            if since < self.rules.min_dwell {
                tracing::debug!(k = p.k, since_ms = since.as_millis() as u64, "proposal held by the minimum dwell time");
                return None;
            }
        }
        Some(self.issue(p.k, p.reason, policy, false, Some(now)))
    }

    /// A new decision with the next epoch, recorded and sent to every subscriber. `now` is
    /// `None` for a re-issue, which does not restart the dwell time.
    fn issue(&mut self, k: u32, reason: String, policy: String, overridden: bool, now: Option<Instant>) -> pb::Decision {
        // No overflow: the base is at most 1.8·10¹⁹ / 10 (see `epoch_base`), and one more per
        // decision will not close that gap.
        self.epoch = self.epoch.max(self.epoch_base) + 1;
        let inputs = self.observation.as_ref().map(Observation::to_proto);
        let d = pb::Decision { split: Some(pb::Split { k, epoch: self.epoch }), reason, inputs, policy, unix_ms: unix_ms(), overridden };
        tracing::info!(epoch = self.epoch, k, policy = %d.policy, overridden, reason = %d.reason, "split decision");
        if let Some(now) = now {
            self.last_change = Some(now);
        }
        self.current = Some(d.clone());
        self.timeline.decision(&d);
        self.history.push_back(d.clone());
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
        self.decisions.send_replace(Some(d.clone()));
        d
    }

    /// Registers (or replaces) a subscriber. Its `last_epoch` is only compared with the counter:
    /// epochs are the agent's to give (see the module docs).
    pub fn subscribe(&mut self, name: &str, role: pb::Role, last_epoch: u64) -> Result<Subscription, AgentError> {
        if name.is_empty() {
            return Err(AgentError::InvalidArgument("subscriber name is empty; give a unique name such as \"ue-1\" or \"edge\"".into()));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(AgentError::InvalidArgument(format!("subscriber name is {} bytes; at most {MAX_NAME_BYTES}", name.len())));
        }
        if last_epoch > self.epoch.max(self.epoch_base) {
            tracing::warn!(
                subscriber = name, last_epoch, epoch = self.epoch, base = self.epoch_base,
                "subscriber reports an epoch above any this agent numbers from (a clock set back, or a forged value); ignored"
            );
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let replaced = CancellationToken::new();
        let old = self.subscribers.insert(
            name.to_string(),
            Subscriber {
                role,
                connected: true,
                generation,
                acked: None,
                replaced: replaced.clone(),
            },
        );
        if let Some(old) = old {
            old.replaced.cancel();
            // Acknowledgements survive a reconnection.
            self.subscribers.get_mut(name).expect("just inserted").acked = old.acked;
        }
        Ok(Subscription { generation, current: self.current.clone(), decisions: self.decisions.subscribe(), replaced })
    }

    /// The stream of subscription `generation` ended.
    pub fn disconnect(&mut self, name: &str, generation: u64) {
        if let Some(s) = self.subscribers.get_mut(name).filter(|s| s.generation == generation) {
            s.connected = false;
        }
    }

    fn decision_at(&self, epoch: u64) -> Option<&pb::Decision> {
        self.history.iter().rev().find(|d| decision_epoch(d) == epoch)
    }

    pub fn ack(&mut self, name: &str, epoch: u64, k: u32) -> Result<(), AgentError> {
        if !self.subscribers.contains_key(name) {
            return Err(AgentError::NotFound(format!("unknown subscriber {name:?}; subscribe before acknowledging")));
        }
        if epoch == 0 {
            return Err(AgentError::InvalidArgument(format!("subscriber {name} acknowledged epoch 0, which is no decision")));
        }
        // Epochs up to the base are a previous run's (the follower applied them before this agent
        // started); they are recorded with any k.
        if epoch > self.epoch.max(self.epoch_base) {
            return Err(AgentError::InvalidArgument(format!(
                "subscriber {name} acknowledged epoch {epoch} but the latest decision is epoch {}",
                self.epoch
            )));
        }
        if let Some(d) = self.decision_at(epoch).filter(|d| decision_k(d) != k) {
            return Err(AgentError::InvalidArgument(format!(
                "subscriber {name} acknowledged epoch {epoch} with k={k} but that decision is k={}",
                decision_k(d)
            )));
        }
        let s = self.subscribers.get_mut(name).expect("checked above");
        // An older epoch is accepted (acks may cross) but never lowers the record.
        if s.acked.is_none_or(|a| epoch >= a.epoch) {
            s.acked = Some(Ack { epoch, k, unix_ms: unix_ms() });
            tracing::info!(subscriber = name, epoch, k, "acknowledged");
        }
        Ok(())
    }

    /// Pins `k` and issues it at once.
    pub fn pin(&mut self, k: u32, reason: &str, now: Instant) -> Result<pb::Decision, AgentError> {
        if k > self.n_layers {
            return Err(AgentError::InvalidArgument(format!("pin_k {k} is outside 0..={} (the model has {} layers)", self.n_layers, self.n_layers)));
        }
        self.pinned = Some(k);
        self.released = false;
        self.candidate = None;
        let reason = if reason.is_empty() { "override".to_string() } else { format!("override: {reason}") };
        Ok(self.issue(k, reason, OVERRIDE.into(), true, Some(now)))
    }

    /// Hands control back to the policy (from the next observation); a no-op when not pinned.
    /// Returns the decision in force.
    pub fn release(&mut self) -> Option<pb::Decision> {
        if self.pinned.take().is_some() {
            self.released = true;
            tracing::info!("override released; the policy decides at the next observation");
        }
        self.current.clone()
    }

    pub fn status(&self, history: u32) -> pb::AgentStatus {
        let n = if history == 0 { self.history.len() } else { (history as usize).min(self.history.len()) };
        pb::AgentStatus {
            current: self.current.clone(),
            observation: self.observation.as_ref().map(Observation::to_proto),
            policy: self.policy.name().to_string(),
            policy_params: self.policy.params().into_iter().collect(),
            subscribers: self
                .subscribers
                .iter()
                .map(|(name, s)| {
                    let a = s.acked.unwrap_or_default();
                    pb::SubscriberStatus { name: name.clone(), role: s.role.into(), connected: s.connected, acked_epoch: a.epoch, acked_k: a.k, acked_unix_ms: a.unix_ms }
                })
                .collect(),
            history: self.history.iter().skip(self.history.len() - n).cloned().collect(),
            n_layers: self.n_layers,
            pinned_k: self.pinned,
            stats_connected: self.stats_connected,
            observations: self.observations,
            min_dwell_ms: self.rules.min_dwell.as_millis() as u64,
        }
    }
}

pub fn decision_k(d: &pb::Decision) -> u32 {
    d.split.map_or(0, |s| s.k)
}

/// Longest subscriber name accepted (names are map keys, labels and log fields).
pub const MAX_NAME_BYTES: usize = 128;

/// The epoch base of an agent started at `now`: milliseconds since 1970 times 10⁶, so decision
/// n of that run is `base + n` and a run started a millisecond later numbers above the first
/// 10⁶ decisions of this one. Fits in u64 until the year 2554.
pub fn epoch_base(now: SystemTime) -> u64 {
    let ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    ms.min(u64::MAX / 10 / 1_000_000) * 1_000_000
}

pub fn decision_epoch(d: &pb::Decision) -> u64 {
    d.split.map_or(0, |s| s.epoch)
}

/// The state behind the service's lock. Nothing awaits while holding it.
pub struct Shared(Mutex<AgentState>);

impl Shared {
    pub fn new(state: AgentState) -> Self {
        Self(Mutex::new(state))
    }

    pub fn lock(&self) -> MutexGuard<'_, AgentState> {
        // A panic under the lock leaves consistent plain data behind (every update is a few
        // assignments); keep serving it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Proposal;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex as StdMutex};

    /// A policy that proposes whatever the test scripts.
    struct Scripted(Arc<StdMutex<u32>>);

    impl Policy for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn params(&self) -> BTreeMap<String, String> {
            BTreeMap::new()
        }
        fn decide(&mut self, _: &Observation, _: Option<u32>) -> Proposal {
            let k = *self.0.lock().unwrap();
            Proposal { k, reason: format!("scripted k={k}") }
        }
    }

    struct Bed {
        state: AgentState,
        want: Arc<StdMutex<u32>>,
        t0: Instant,
    }

    impl Bed {
        fn new(dwell_ms: u64, confirm: u32) -> Self {
            let want = Arc::new(StdMutex::new(10));
            let rules = Rules { min_dwell: Duration::from_millis(dwell_ms), confirm };
            let state = AgentState::new(Box::new(Scripted(want.clone())), 30, rules, 8).with_epoch_base(0);
            Self { state, want, t0: Instant::now() }
        }

        fn based(mut self, base: u64) -> Self {
            self.state = self.state.with_epoch_base(base);
            self
        }

        /// The policy proposes `k` at time `t_ms`; returns (k, epoch) of the decision made, if any.
        fn at(&mut self, t_ms: u64, k: u32) -> Option<(u32, u64)> {
            *self.want.lock().unwrap() = k;
            let d = self.state.observe(Observation::with(10.0, 0.0), self.t0 + Duration::from_millis(t_ms));
            d.map(|d| (decision_k(&d), decision_epoch(&d)))
        }

        fn k_now(&self) -> Option<u32> {
            self.state.current().map(decision_k)
        }
    }

    #[test]
    fn the_first_observation_decides_at_once() {
        let mut b = Bed::new(10_000, 3);
        assert_eq!(b.at(0, 10), Some((10, 1)));
        assert_eq!(b.at(1, 10), None, "same k: nothing new");
    }

    #[test]
    fn a_proposal_needs_confirm_consecutive_observations() {
        let mut b = Bed::new(0, 3);
        b.at(0, 10);
        assert_eq!(b.at(100, 20), None);
        assert_eq!(b.at(200, 20), None);
        assert_eq!(b.at(300, 20), Some((20, 2)), "third in a row");
        // A streak broken by another proposal starts again.
        assert_eq!(b.at(400, 5), None);
        assert_eq!(b.at(500, 6), None);
        assert_eq!(b.at(600, 5), None);
        assert_eq!(b.at(700, 20), None, "back to the split in force: no change");
        assert_eq!(b.at(800, 5), None);
        assert_eq!(b.at(900, 5), None);
        assert_eq!(b.at(1000, 5), Some((5, 3)));
    }

    #[test]
    fn no_policy_change_within_the_dwell_time() {
        let mut b = Bed::new(2_000, 1);
        b.at(0, 10);
        assert_eq!(b.at(500, 20), None);
        assert_eq!(b.at(1_999, 20), None);
        assert_eq!(b.at(2_000, 20), Some((20, 2)));
        assert_eq!(b.at(2_100, 10), None, "dwell restarts at every decision");
        assert_eq!(b.at(4_100, 10), Some((10, 3)));
        // Confirmation and dwell together: a streak that completes inside the dwell waits for it.
        let mut b = Bed::new(1_000, 2);
        b.at(0, 10);
        assert_eq!(b.at(100, 20), None);
        assert_eq!(b.at(200, 20), None, "confirmed, but dwelling");
        assert_eq!(b.at(1_000, 20), Some((20, 2)));
        assert_eq!(b.k_now(), Some(20));
    }

    #[test]
    fn pin_issues_at_once_and_release_hands_back_to_the_policy() {
        let mut b = Bed::new(60_000, 2);
        b.at(0, 10);
        let d = b.state.pin(5, "experiment 3", b.t0).unwrap();
        assert_eq!((decision_k(&d), decision_epoch(&d), d.overridden, d.reason.as_str(), d.policy.as_str()), (5, 2, true, "override: experiment 3", OVERRIDE));
        assert_eq!(b.at(100, 20), None, "pinned: the policy is not asked");
        assert_eq!(b.at(200, 20), None);
        assert_eq!(b.state.status(0).pinned_k, Some(5));
        let e = b.state.pin(31, "", b.t0).unwrap_err().to_string();
        assert_eq!(e, "pin_k 31 is outside 0..=30 (the model has 30 layers)");
        assert_eq!((b.k_now(), b.state.status(0).pinned_k, b.state.epoch()), (Some(5), Some(5), 2), "a refused pin changes nothing");

        let in_force = b.state.release().unwrap();
        assert_eq!(decision_epoch(&in_force), 2);
        // No dwell and no confirmation for the first decision after release, even for the same k.
        assert_eq!(b.at(300, 5), Some((5, 3)));
        let cur = b.state.current().unwrap();
        assert!(!cur.overridden && cur.policy == "scripted" && cur.reason.starts_with("override released; "), "{cur:?}");
        // Then the usual rules again.
        assert_eq!(b.at(400, 20), None);
        assert!(b.state.release().is_some_and(|d| decision_epoch(&d) == 3), "release without a pin is a no-op");
        assert_eq!(b.at(500, 20), None);
    }

    #[test]
    fn a_subscriber_cannot_move_the_epoch() {
        // The wrap an adversarial run found: one Subscribe with last_epoch 2^64 - 2 used to raise
        // the counter there, the next decisions wrapped to 0 and every follower dropped them.
        let mut b = Bed::new(0, 1).based(1000);
        assert_eq!(b.at(0, 10), Some((10, 1001)));
        let mut ue = b.state.subscribe("ue", pb::Role::Ue, 0).unwrap();
        let s = b.state.subscribe("mallory", pb::Role::Ue, u64::MAX - 1).unwrap();
        assert_eq!(s.current.as_ref().map(decision_epoch), Some(1001), "nothing re-issued");
        assert!(!ue.decisions.has_changed().unwrap());
        assert_eq!(b.state.epoch(), 1001);
        assert_eq!(b.at(10, 12), Some((12, 1002)));
        assert_eq!(b.at(20, 14), Some((14, 1003)));
        assert_eq!(ue.decisions.borrow_and_update().as_ref().map(decision_epoch), Some(1003));
        assert!(matches!(b.state.ack("mallory", u64::MAX - 1, 14), Err(AgentError::InvalidArgument(_))));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(b.state.subscribe(&long, pb::Role::Ue, 0), Err(AgentError::InvalidArgument(_))));
    }

    #[test]
    fn a_restarted_agent_numbers_above_its_previous_run() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_750_000_123);
        assert_eq!(epoch_base(t), 1_764_750_000_123_000_000);
        assert!(epoch_base(t + Duration::from_millis(1)) >= epoch_base(t) + 1_000_000);
        assert!(epoch_base(UNIX_EPOCH + Duration::from_secs(1 << 40)).checked_add(u64::MAX / 10).is_some(), "no overflow, ever");
        // The real clock: a later start numbers above an earlier run's decisions.
        let mut first = Bed::new(0, 1).based(epoch_base(SystemTime::now()));
        let (_, e1) = first.at(0, 10).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let mut second = Bed::new(0, 1).based(epoch_base(SystemTime::now()));
        let (_, e2) = second.at(0, 10).unwrap();
        assert!(e2 > e1 + 1_000_000, "{e2} after {e1}");
    }

    #[test]
    fn an_up_to_date_subscriber_reconnecting_causes_no_reissue() {
        let mut b = Bed::new(0, 1);
        b.at(0, 10);
        b.state.subscribe("ue", pb::Role::Ue, 0).unwrap();
        b.at(10, 12);
        b.state.ack("ue", 2, 12).unwrap();
        let s = b.state.subscribe("ue", pb::Role::Ue, 2).unwrap();
        assert_eq!(s.current.map(|d| decision_epoch(&d)), Some(2));
        assert_eq!(b.state.epoch(), 2);
        // Delivered while connected but not yet acknowledged: also no re-issue.
        b.at(20, 14);
        b.state.subscribe("ue", pb::Role::Ue, 3).unwrap();
        assert_eq!(b.state.epoch(), 3);
        // Another subscriber reporting the same epoch causes nothing either.
        b.state.subscribe("edge", pb::Role::Edge, 3).unwrap();
        assert_eq!(b.state.epoch(), 3);
    }

    #[test]
    fn acks_are_validated_and_never_lower_the_record() {
        let mut b = Bed::new(0, 1);
        b.at(0, 10);
        b.at(10, 12);
        b.at(20, 14);
        assert!(matches!(b.state.ack("ue", 1, 10), Err(AgentError::NotFound(_))));
        b.state.subscribe("ue", pb::Role::Ue, 0).unwrap();
        let status = |b: &Bed| b.state.status(0).subscribers[0].clone();
        b.state.ack("ue", 2, 12).unwrap();
        assert_eq!((status(&b).acked_epoch, status(&b).acked_k), (2, 12));

        let e = b.state.ack("ue", 9, 14).unwrap_err();
        assert!(matches!(e, AgentError::InvalidArgument(_)));
        assert_eq!(e.to_string(), "subscriber ue acknowledged epoch 9 but the latest decision is epoch 3");
        let e = b.state.ack("ue", 3, 10).unwrap_err();
        assert_eq!(e.to_string(), "subscriber ue acknowledged epoch 3 with k=10 but that decision is k=14");
        assert!(matches!(b.state.ack("ue", 0, 10), Err(AgentError::InvalidArgument(_))));
        assert_eq!((status(&b).acked_epoch, status(&b).acked_k), (2, 12), "refused acks change nothing");

        b.state.ack("ue", 1, 10).unwrap();
        assert_eq!(status(&b).acked_epoch, 2, "an older epoch is accepted but does not lower the record");
        b.state.ack("ue", 3, 14).unwrap();
        assert_eq!((status(&b).acked_epoch, status(&b).acked_k), (3, 14));
    }

    #[test]
    fn an_epoch_from_a_previous_run_is_accepted_with_any_k() {
        let mut b = Bed::new(0, 1).based(1000);
        b.state.subscribe("ue", pb::Role::Ue, 7).unwrap();
        b.state.ack("ue", 7, 3).unwrap();
        b.at(0, 10);
        b.state.ack("ue", 1001, 10).unwrap();
        assert!(matches!(b.state.ack("ue", 1002, 10), Err(AgentError::InvalidArgument(_))), "not issued yet");
    }

    #[test]
    fn resubscribing_replaces_the_old_stream_and_keeps_acks() {
        let mut b = Bed::new(0, 1);
        b.at(0, 10);
        let old = b.state.subscribe("ue", pb::Role::Ue, 0).unwrap();
        b.state.ack("ue", 1, 10).unwrap();
        let new = b.state.subscribe("ue", pb::Role::Ue, 1).unwrap();
        assert!(old.replaced.is_cancelled() && !new.replaced.is_cancelled());
        // The old stream ending must not mark the new subscription disconnected.
        b.state.disconnect("ue", old.generation);
        let s = &b.state.status(0).subscribers[0];
        assert!(s.connected && s.acked_epoch == 1);
        b.state.disconnect("ue", new.generation);
        assert!(!b.state.status(0).subscribers[0].connected);
        assert!(matches!(b.state.subscribe("", pb::Role::Ue, 0), Err(AgentError::InvalidArgument(_))));
    }

    #[test]
    fn history_is_bounded_and_status_limits_it() {
        let mut b = Bed::new(0, 1);
        for i in 0..12 {
            b.at(i * 10, i as u32);
        }
        let all = b.state.status(0).history;
        assert_eq!(all.iter().map(decision_epoch).collect::<Vec<_>>(), (5..=12).collect::<Vec<_>>(), "the 8 most recent, oldest first");
        assert_eq!(b.state.status(3).history.iter().map(decision_epoch).collect::<Vec<_>>(), [10, 11, 12]);
        assert_eq!(b.state.status(100).history.len(), 8);
        let s = b.state.status(0);
        assert_eq!((s.observations, s.n_layers, s.min_dwell_ms, s.policy.as_str()), (12, 30, 0, "scripted"));
    }
}
