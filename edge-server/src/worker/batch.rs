//! Rounds of jobs and batched decode steps: how [`State::handle_all`] runs the single-row
//! decode steps of a round as one forward pass, whatever their splits (a session at `k` joins
//! the pass at layer `k`), and keeps every session's jobs in arrival order.

use std::collections::HashSet;
use std::time::Instant;

use candle_core::Tensor;
use split_core::model::KvCache;
use tokio::sync::oneshot;

use super::{Job, SessionId, State, StepInput, TokenOut, sample};
use crate::error::EdgeError;

/// A checked decode step waiting for its batch.
struct Waiting {
    input: StepInput,
    x: Tensor,
    reply: oneshot::Sender<Result<Option<TokenOut>, EdgeError>>,
}

/// Checked decode steps of one round. The edge runs layers `k..L` of a session at `k`, a suffix
/// of every other session's, so all of them share one pass.
#[derive(Default)]
struct Pending {
    batch: Vec<Waiting>,
    sessions: HashSet<SessionId>,
}

impl State {
    /// Handles jobs taken off the queue together. Checked decode steps wait in `pending`, one
    /// batch across all splits, until the end of the round. Any other job of a waiting session
    /// first runs the waiting batches, so each session sees its jobs in arrival order; so does a
    /// split change, so that it does not hold up steps that came before it. Prefill steps join
    /// the prefills in progress (`prefill.rs`), which advance between rounds. Light jobs of
    /// other sessions run at once, overtaking the waiting steps.
    pub(super) fn handle_all(&mut self, jobs: Vec<Job>) {
        let mut pending = Pending::default();
        for job in jobs {
            if let Some(id) = job.session().filter(|id| self.prefill_in_progress(id)).cloned() {
                self.finish_prefill(&id, matches!(job, Job::Close(_)));
            }
            let waits = job.session().is_some_and(|id| pending.sessions.contains(id));
            if waits || matches!(job, Job::Expire(_) | Job::Migrate(..)) {
                self.run_pending(&mut pending);
            }
            let Job::Step(s, reply) = job else {
                self.handle(job);
                continue;
            };
            let queue = s.enqueued.elapsed();
            let started = Instant::now();
            match self.check_step(&s) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(c) if c.decode => {
                    pending.sessions.insert(s.session.clone());
                    pending.batch.push(Waiting { input: s, x: c.x, reply });
                }
                Ok(c) => self.start_prefill(s, c, reply, queue, started),
            }
        }
        self.run_pending(&mut pending);
    }

    fn run_pending(&mut self, pending: &mut Pending) {
        let batch = std::mem::take(&mut pending.batch);
        if !batch.is_empty() {
            self.step_batch(batch);
        }
        pending.sessions.clear();
    }

    /// One forward pass for checked decode steps of distinct sessions, each joining at its split.
    fn step_batch(&mut self, batch: Vec<Waiting>) {
        let started = Instant::now();
        // The members leave the map while their caches are borrowed together, and all return.
        let mut members = Vec::with_capacity(batch.len());
        for w in batch {
            match self.sessions.remove(&w.input.session) {
                Some(sess) => members.push((w, sess)),
                None => {
                    let e = self.missing(&w.input.session);
                    let _ = w.reply.send(Err(e));
                }
            }
        }
        let model = &self.model.model;
        let x: Vec<Tensor> = members.iter().map(|(w, _)| w.x.clone()).collect();
        let logits = {
            let mut caches: Vec<&mut KvCache> = members.iter_mut().map(|(_, s)| &mut s.cache).collect();
            model
                .run_layers_batch(&x, &mut caches)
                .and_then(|h| model.head_last_batch(&h))
                .and_then(|l| l.iter().map(|t| Ok(t.to_vec1::<f32>()?)).collect::<split_core::Result<Vec<_>>>())
        };
        let n = members.len();
        let results: Vec<Result<(usize, u32, f32, bool), EdgeError>> = match logits {
            Ok(logits) => members
                .iter_mut()
                .zip(&logits)
                .map(|((w, sess), logits)| {
                    sess.epoch = w.input.split.epoch;
                    sess.wire = w.input.hidden.dtype();
                    let (id, logprob, eos) = sample(sess, &self.model, logits)?;
                    Ok((sess.cache.position(), id, logprob, eos))
                })
                .collect(),
            Err(e) => {
                // Every member passed its checks, so this is the edge's fault, not a UE's.
                tracing::error!(error = %e, batch = n, "batched decode step failed");
                let e = EdgeError::from(e);
                members.iter().map(|_| Err(duplicate(&e))).collect()
            }
        };
        let compute = started.elapsed();
        tracing::debug!(batch = n, compute_us = compute.as_micros() as u64, "batched decode step");
        for ((w, mut sess), result) in members.into_iter().zip(results) {
            let queue = started.saturating_duration_since(w.input.enqueued);
            let out = result.map(|(position, id, logprob, eos)| TokenOut { position, id, logprob, queue, compute, eos, batch: n });
            if let Ok(t) = &out {
                sess.last_token = Some(*t);
            }
            let _ = w.reply.send(out.map(Some));
            self.sessions.insert(w.input.session, sess);
        }
    }
}

/// The same error again, for every member of a failed batch.
fn duplicate(e: &EdgeError) -> EdgeError {
    match e {
        EdgeError::InvalidArgument(m) => EdgeError::InvalidArgument(m.clone()),
        EdgeError::NotFound(m) => EdgeError::NotFound(m.clone()),
        EdgeError::FailedPrecondition(m) => EdgeError::FailedPrecondition(m.clone()),
        EdgeError::ResourceExhausted(m) => EdgeError::ResourceExhausted(m.clone()),
        EdgeError::Unavailable(m) => EdgeError::Unavailable(m.clone()),
        EdgeError::Internal(m) => EdgeError::Internal(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::OpenParams;
    use split_core::sampling::SamplingConfig;
    use split_core::split::{Epoch, Split};
    use split_core::wire::{CandleWire, WireDType, WireTensor};
    use splitinfer_tests::shared_model;

    type StepReply = oneshot::Receiver<Result<Option<TokenOut>, EdgeError>>;

    /// The UE of one session, in process: layers `0..k`, its cache and the next token.
    struct Ue {
        id: SessionId,
        k: usize,
        cache: KvCache,
        next: u32,
    }

    impl Ue {
        /// The step for `tokens` (the prompt, or the last token) at the session's position.
        fn step(&mut self, tokens: &[u32]) -> StepInput {
            let model = &shared_model().model;
            let position = self.cache.position();
            let x = model.run_layers(&model.embed(tokens).unwrap(), &mut self.cache).unwrap();
            StepInput {
                session: self.id.clone(),
                position,
                split: Split::new(self.k, 0),
                hidden: WireTensor::from_tensor(&x, WireDType::F32).unwrap(),
                erased: Vec::new(),
                enqueued: Instant::now(),
            }
        }

        fn decode(&mut self) -> StepInput {
            self.step(&[self.next])
        }
    }

    fn step_job(s: StepInput) -> (Job, StepReply) {
        let (reply, rx) = oneshot::channel();
        (Job::Step(s, reply), rx)
    }

    fn reply(mut rx: StepReply) -> Result<Option<TokenOut>, EdgeError> {
        rx.try_recv().expect("every job of a round is answered by the end of the round")
    }

    /// Opens a session split at `k` and prefills `prompt` alone.
    fn open(state: &mut State, k: usize, prompt: &str, sampling: SamplingConfig) -> Ue {
        let model = shared_model();
        let tokens = model.tokenizer.encode(prompt).unwrap();
        let opened = state
            .open(OpenParams { sampling, ..open_params(k, tokens.len()) })
            .unwrap();
        let mut ue = Ue { id: opened.id, k, cache: KvCache::new(0..k), next: 0 };
        let (job, rx) = step_job(ue.step(&tokens));
        state.handle_all(vec![job]);
        settle(state);
        ue.next = reply(rx).unwrap().unwrap().id;
        ue
    }

    /// A greedy session split at `k` for a prompt of `prompt_tokens`.
    fn open_params(k: usize, prompt_tokens: usize) -> OpenParams {
        OpenParams {
            split: shared_model().model.split_point(k).unwrap(),
            epoch: Epoch::ZERO,
            sampling: SamplingConfig::GREEDY,
            max_new_tokens: 32,
            ignore_eos: false,
            prompt_tokens,
            client: "test".into(),
            resume: None,
            resume_secret: String::new(),
            link: Default::default(),
            calibration_sha256: String::new(),
            scoring: false,
        }
    }

    /// Runs the prefills in progress to their end, as the worker loop does between rounds.
    fn settle(state: &mut State) -> usize {
        let mut units = 0;
        while state.prefilling() {
            state.prefill_unit();
            units += 1;
        }
        units
    }

    const SESSIONS: &[(usize, &str)] = &[
        (0, "The capital of France is"),
        (0, "Once upon a time, in a small village by the sea,"),
        (0, "The weather today is"),
        (12, "The capital of France is"),
        (12, "def fibonacci(n):"),
        (30, "In 1969, the first humans"),
    ];

    fn open_all(state: &mut State) -> Vec<Ue> {
        SESSIONS
            .iter()
            .enumerate()
            .map(|(i, &(k, prompt))| {
                // One sampled session: its seeded sampler must see only its own logits.
                let sampling = if i == 1 {
                    SamplingConfig { temperature: 0.8, top_k: Some(40), top_p: Some(0.95), seed: 3 }
                } else {
                    SamplingConfig::GREEDY
                };
                open(state, k, prompt, sampling)
            })
            .collect()
    }

    #[test]
    fn a_round_of_decode_steps_at_three_splits_is_one_pass_and_equals_stepping_alone() {
        let model = shared_model();
        let mut alone = State::new(model.clone(), 16, None);
        let mut batched = State::new(model, 16, None);
        let mut ues_alone = open_all(&mut alone);
        let mut ues_batched = open_all(&mut batched);
        for round in 0..8 {
            let mut want = Vec::new();
            for ue in &mut ues_alone {
                let (job, rx) = step_job(ue.decode());
                alone.handle_all(vec![job]);
                let t = reply(rx).unwrap().unwrap();
                assert_eq!(t.batch, 1);
                ue.next = t.id;
                want.push(t);
            }
            let (jobs, rxs): (Vec<Job>, Vec<StepReply>) = ues_batched.iter_mut().map(|ue| step_job(ue.decode())).unzip();
            batched.handle_all(jobs);
            for (i, (ue, rx)) in ues_batched.iter_mut().zip(rxs).enumerate() {
                let t = reply(rx).unwrap().unwrap();
                let w = &want[i];
                assert_eq!(
                    (t.position, t.id, t.logprob.to_bits(), t.eos),
                    (w.position, w.id, w.logprob.to_bits(), w.eos),
                    "round {round}, session {i} (k={})",
                    ue.k
                );
                // Three sessions at k=0, two at k=12, one at k=30: one pass for all six, each
                // joining at its own split.
                assert_eq!(t.batch, SESSIONS.len(), "round {round}, session {i}");
                ue.next = t.id;
            }
        }
    }

    #[test]
    fn a_bad_step_fails_only_its_own_session() {
        let mut state = State::new(shared_model(), 16, None);
        let mut ues: Vec<Ue> = SESSIONS[..3].iter().map(|&(k, p)| open(&mut state, k, p, SamplingConfig::GREEDY)).collect();
        let good_a = ues[0].decode();
        let mut bad = ues[1].decode();
        let mut values = bad.hidden.to_f32_vec();
        values[3] = f32::NAN;
        bad.hidden = WireTensor::from_f32(WireDType::F32, bad.hidden.shape().to_vec(), &values).unwrap();
        let good_c = ues[2].decode();
        let (jobs, rxs): (Vec<Job>, Vec<StepReply>) = [good_a, bad, good_c].into_iter().map(step_job).unzip();
        state.handle_all(jobs);
        let out: Vec<_> = rxs.into_iter().map(reply).collect();
        let e = out[1].as_ref().unwrap_err();
        assert!(matches!(e, EdgeError::InvalidArgument(_)), "{e:?}");
        assert_eq!(e.to_string(), "activation holds a non-finite value NaN at element 3");
        for i in [0, 2] {
            assert_eq!(out[i].as_ref().unwrap().unwrap().batch, 2, "session {i} shares a pass with the other good one");
        }
        // The refused session is where it was and takes the same position again.
        let position = state.sessions[&ues[1].id].cache.position();
        let mut retry = ues[1].decode();
        retry.position = position;
        let (job, rx) = step_job(retry);
        state.handle_all(vec![job]);
        assert_eq!(reply(rx).unwrap().unwrap().position, position + 1);
    }

    #[test]
    fn a_prefill_holds_up_no_decode_step_queued_before_or_after_it() {
        let mut state = State::new(shared_model(), 16, None);
        let mut ues: Vec<Ue> = SESSIONS[..3].iter().map(|&(k, p)| open(&mut state, k, p, SamplingConfig::GREEDY)).collect();
        let model = shared_model();
        let prompt = model.tokenizer.encode("A new session arrives with its prompt").unwrap();
        let opened = state
            .open(OpenParams { max_new_tokens: 4, ..open_params(0, prompt.len()) })
            .unwrap();
        let mut newcomer = Ue { id: opened.id, k: 0, cache: KvCache::new(0..0), next: 0 };
        let (a, rx_a) = step_job(ues[0].decode());
        let (b, rx_b) = step_job(ues[1].decode());
        let (prefill, rx_prefill) = step_job(newcomer.step(&prompt));
        let (c, rx_c) = step_job(ues[2].decode());
        let mut rx_prefill = rx_prefill;
        state.handle_all(vec![a, b, prefill, c]);
        // All three decode steps share one pass at the end of the round, the prefill's waiting.
        for rx in [rx_a, rx_b, rx_c] {
            assert_eq!(reply(rx).unwrap().unwrap().batch, 3);
        }
        assert!(rx_prefill.try_recv().is_err(), "the prefill runs between rounds, not in this one");
        assert_eq!(settle(&mut state), 30 * units_per_layer(prompt.len()), "30 layers at k = 0, one chunk");
        assert_eq!(rx_prefill.try_recv().unwrap().unwrap().unwrap().position, prompt.len());
    }

    /// The units one layer of a chunk of `rows` takes: the projections, one per query head (the
    /// last with the output projection) and the MLP; a single row's attention runs whole.
    fn units_per_layer(rows: usize) -> usize {
        if rows == 1 { 2 } else { shared_model().model.config().n_heads + 2 }
    }

    /// A prefill of more rows than a chunk runs in chunks, a unit at a time, with other
    /// sessions' steps answered in between, and gives the bits of running those chunks whole.
    #[test]
    fn a_long_prefill_runs_in_chunks_between_other_steps_and_equals_running_them_whole() {
        let model = shared_model();
        let mut state = State::new(model.clone(), 16, None);
        state.prefill_chunk = 16;
        let mut other = open(&mut state, 12, SESSIONS[3].1, SamplingConfig::GREEDY);
        let k = 10;
        let text = "The harbour master kept a ledger of every ship that entered the bay, its cargo, its crew and the weather on the day it arrived, and the ledger survived the fire.";
        let prompt = model.tokenizer.encode(text).unwrap();
        assert!(prompt.len() > 32 && !prompt.len().is_multiple_of(16), "three chunks, the last one short: {} tokens", prompt.len());
        let opened = state
            .open(OpenParams { max_new_tokens: 4, ..open_params(k, prompt.len()) })
            .unwrap();
        let mut long = Ue { id: opened.id, k, cache: KvCache::new(0..k), next: 0 };
        let input = long.step(&prompt);
        // The edge's half by hand: layers k..L on 16-row chunks, each run whole.
        let x = CandleWire::to_tensor(&input.hidden, model.model.device()).unwrap();
        let mut cache = KvCache::new(k..30);
        let mut h = None;
        for start in (0..prompt.len()).step_by(16) {
            let n = 16.min(prompt.len() - start);
            h = Some(model.model.run_layers(&x.narrow(1, start, n).unwrap(), &mut cache).unwrap());
        }
        let logits = model.model.head_last(&h.unwrap()).unwrap().to_vec1::<f32>().unwrap();
        let want = split_core::sampling::Sampler::new(SamplingConfig::GREEDY).unwrap().sample(&logits).unwrap();

        let (job, rx) = step_job(input);
        let mut rx = rx;
        state.handle_all(vec![job]);
        let mut units = 0;
        let mut answered_between = 0;
        while state.prefilling() {
            state.prefill_unit();
            units += 1;
            if units % 40 == 0 && state.prefilling() {
                let (step, rx_other) = step_job(other.decode());
                state.handle_all(vec![step]);
                other.next = reply(rx_other).unwrap().unwrap().id;
                answered_between += 1;
            }
        }
        let chunks = (0..prompt.len()).step_by(16).map(|start| 16.min(prompt.len() - start));
        assert_eq!(units, chunks.map(units_per_layer).sum::<usize>() * (30 - k), "a unit is a piece of one layer of one chunk");
        assert!(answered_between >= 5, "the other session stepped while the prefill ran");
        let got = rx.try_recv().unwrap().unwrap().unwrap();
        assert_eq!((got.position, got.id, got.logprob.to_bits()), (prompt.len(), want.id, want.logprob.to_bits()));
        assert_eq!(state.sessions[&long.id].cache.position(), prompt.len());
    }

    /// Another job of a session whose prefill is in progress first completes the prefill; a
    /// close drops it.
    #[test]
    fn a_job_of_a_prefilling_session_waits_for_the_prefill_and_a_close_drops_it() {
        let model = shared_model();
        let mut state = State::new(model.clone(), 16, None);
        let prompt = model.tokenizer.encode(SESSIONS[1].1).unwrap();
        let params = |state: &mut State| {
            state
                .open(OpenParams { max_new_tokens: 4, ..open_params(4, prompt.len()) })
                .unwrap()
        };
        let opened = params(&mut state);
        let mut ue = Ue { id: opened.id.clone(), k: 4, cache: KvCache::new(0..4), next: 0 };
        let (job, mut rx) = step_job(ue.step(&prompt));
        state.handle_all(vec![job]);
        state.prefill_unit();
        let (progress, mut rx_progress) = oneshot::channel();
        state.handle_all(vec![Job::Progress(opened.id.clone(), progress)]);
        assert_eq!(rx_progress.try_recv().unwrap().unwrap().position, prompt.len(), "the query saw the finished prefill");
        assert!(rx.try_recv().unwrap().unwrap().is_some());
        assert!(!state.prefilling());

        let opened = params(&mut state);
        let mut ue = Ue { id: opened.id.clone(), k: 4, cache: KvCache::new(0..4), next: 0 };
        let (job, mut rx) = step_job(ue.step(&prompt));
        state.handle_all(vec![job]);
        state.prefill_unit();
        state.handle_all(vec![Job::Close(opened.id.clone())]);
        assert!(matches!(rx.try_recv().unwrap(), Err(EdgeError::Unavailable(_))));
        assert!(!state.prefilling() && !state.sessions.contains_key(&opened.id));
    }

    #[test]
    fn a_sessions_jobs_keep_their_order_around_a_waiting_batch() {
        let mut state = State::new(shared_model(), 16, None);
        let mut ues: Vec<Ue> = SESSIONS[..3].iter().map(|&(k, p)| open(&mut state, k, p, SamplingConfig::GREEDY)).collect();
        let a = ues[0].id.clone();
        let before = state.sessions[&a].cache.position();
        let (step_a, rx_a) = step_job(ues[0].decode());
        let (progress, rx_progress) = oneshot::channel();
        let (step_b, rx_b) = step_job(ues[1].decode());
        let (step_c, rx_c) = step_job(ues[2].decode());
        let (late_a, rx_late_a) = step_job(ues[0].decode());
        state.handle_all(vec![
            step_a,
            Job::Progress(a.clone(), progress),
            step_b,
            Job::Close(a.clone()),
            step_c,
            late_a,
        ]);
        // A's step ran before its progress query and its close, on its own: the query came
        // before any other session's step was waiting.
        assert_eq!(reply(rx_a).unwrap().unwrap().batch, 1);
        let mut rx_progress = rx_progress;
        assert_eq!(rx_progress.try_recv().unwrap().unwrap().position, before + 1);
        assert!(matches!(reply(rx_late_a), Err(EdgeError::NotFound(_))), "a step after the close finds no session");
        assert!(!state.sessions.contains_key(&a));
        // B and C did not wait for A's jobs and shared one pass.
        assert_eq!(reply(rx_b).unwrap().unwrap().batch, 2);
        assert_eq!(reply(rx_c).unwrap().unwrap().batch, 2);
    }
}
