//! Prefill steps interleaved with everything else: a checked prefill waits in
//! [`State::prefills`] and advances one piece of one layer of one chunk of
//! [`State::prefill_chunk`] rows per turn of the worker loop (the projections, one query head of
//! the attention, or the MLP: [`split_core::model::SplitModel::run_next_block`]), so a 4,096-row
//! prompt costs other sessions at most one such unit of waiting per decode step instead of the
//! whole prompt. Prefills take turns, round robin.
//!
//! Any other job of a session whose prefill is in progress first completes that prefill (a
//! close drops it instead), so each session still sees its jobs in arrival order.

use std::time::{Duration, Instant};

use candle_core::Tensor;
use split_core::model::LayerRun;
use split_core::wire::WireDType;
use tokio::sync::oneshot;

use super::{CheckedStep, SessionId, State, StepInput, TokenOut, sample};
use crate::error::EdgeError;

type Reply = oneshot::Sender<Result<Option<TokenOut>, EdgeError>>;

pub(super) struct Prefill {
    session: SessionId,
    epoch: split_core::split::Epoch,
    wire: WireDType,
    /// The whole activation, `[1, rows, hidden]`.
    x: Tensor,
    rows: usize,
    /// The session's position before the step.
    position: usize,
    /// Rows every layer has processed.
    done: usize,
    /// The chunk in progress.
    run: Option<LayerRun>,
    reply: Reply,
    queue: Duration,
    started: Instant,
}

impl State {
    /// Queues a checked prefill step; its reply comes when its last chunk has run.
    pub(super) fn start_prefill(&mut self, s: StepInput, c: CheckedStep, reply: Reply, queue: Duration, started: Instant) {
        self.prefills.push_back(Prefill {
            session: s.session,
            epoch: s.split.epoch,
            wire: s.hidden.dtype(),
            x: c.x,
            rows: c.rows,
            position: c.position,
            done: 0,
            run: None,
            reply,
            queue,
            started,
        });
    }

    pub(super) fn prefilling(&self) -> bool {
        !self.prefills.is_empty()
    }

    pub(super) fn prefill_in_progress(&self, id: &SessionId) -> bool {
        self.prefills.iter().any(|p| &p.session == id)
    }

    /// One unit of the oldest prefill's current chunk; the prefill then goes to the back.
    pub(super) fn prefill_unit(&mut self) {
        let Some(mut p) = self.prefills.pop_front() else { return };
        match self.advance(&mut p) {
            Ok(None) => self.prefills.push_back(p),
            Ok(Some(out)) => {
                let _ = p.reply.send(Ok(out));
            }
            Err(e) => {
                tracing::error!(session = %p.session, error = %e, "prefill failed");
                let _ = p.reply.send(Err(e));
            }
        }
    }

    /// Runs the prefill of `id` to its end (before another job of the session), or drops it
    /// when `abort` (the session is closing).
    pub(super) fn finish_prefill(&mut self, id: &SessionId, abort: bool) {
        let Some(i) = self.prefills.iter().position(|p| &p.session == id) else { return };
        let Some(mut p) = self.prefills.remove(i) else { return };
        if abort {
            let _ = p.reply.send(Err(EdgeError::Unavailable(format!("session {id} closed during its prefill"))));
            return;
        }
        let out = loop {
            match self.advance(&mut p) {
                Ok(None) => {}
                Ok(Some(out)) => break Ok(out),
                Err(e) => break Err(e),
            }
        };
        let _ = p.reply.send(out);
    }

    /// One unit of `p`'s current chunk; `Some` with the step's outcome once its last row is in.
    fn advance(&mut self, p: &mut Prefill) -> Result<Option<Option<TokenOut>>, EdgeError> {
        let model = &self.model.model;
        let missing = self.missing(&p.session);
        let sess = self.sessions.get_mut(&p.session).ok_or(missing)?;
        sess.last_active = Instant::now();
        if p.run.is_none() {
            let n = self.prefill_chunk.min(p.rows - p.done);
            p.run = Some(model.start_layers(&p.x.narrow(1, p.done, n)?, &sess.cache)?);
        }
        let Some(run) = p.run.as_mut() else { unreachable!("started above") };
        if !model.run_next_block(run, &mut sess.cache)? {
            return Ok(None);
        }
        p.done += run.rows();
        if p.done < p.rows {
            p.run = None;
            return Ok(None);
        }
        sess.epoch = p.epoch;
        sess.wire = p.wire.for_caches();
        let end = p.position + p.rows;
        if end < sess.prompt_tokens {
            return Ok(Some(None));
        }
        let logits = model.head_last(run.output())?.to_vec1::<f32>()?;
        let (id, logprob, eos) = sample(sess, &self.model, &logits)?;
        let out = TokenOut { position: end, id, logprob, queue: p.queue, compute: p.started.elapsed(), eos, batch: 1 };
        sess.last_token = Some(out);
        Ok(Some(Some(out)))
    }
}
