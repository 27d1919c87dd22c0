//! Teacher-forced scoring (`Open.scoring`): each activation is one window of a given text at the
//! session's split, computed from an empty cache of its own, and the answer is the
//! log-probability of each given next token. The operations are those of `splitinfer ppl` in
//! process (`split_core::perplexity`): the edge's layers on the whole window in one pass, then
//! the head and a log-softmax on the scored rows, so on a clean f32 link the two agree exactly.

use std::time::{Duration, Instant};

use split_core::model::KvCache;
use split_core::split::Split;
use split_core::wire::WireTensor;

use super::{SessionId, State, Worker};
use crate::error::EdgeError;

/// One window to score.
#[derive(Debug)]
pub struct ScoreInput {
    pub session: SessionId,
    /// The split the UE computed the window at.
    pub split: Split,
    /// `[1, rows, hidden]`, the window's hidden state after layer k.
    pub hidden: WireTensor,
    /// One bit per element the channel erased (LSB first); empty: none.
    pub erased: Vec<u8>,
    /// The given next token of rows `first_row`, `first_row + 1`, ...
    pub targets: Vec<u32>,
    pub first_row: usize,
    pub enqueued: Instant,
}

/// The window's scores.
#[derive(Debug, Clone)]
pub struct ScoreOut {
    /// Natural-log probability of each target, in order.
    pub logprob: Vec<f32>,
    pub queue: Duration,
    pub compute: Duration,
}

impl Worker {
    pub async fn score(&self, s: ScoreInput) -> Result<ScoreOut, EdgeError> {
        self.call(|r| super::Job::Score(s, r)).await?
    }
}

impl State {
    pub(super) fn score(&mut self, s: ScoreInput) -> Result<ScoreOut, EdgeError> {
        let queue = s.enqueued.elapsed();
        let missing = self.missing(&s.session);
        let model = &self.model.model;
        let (hidden_size, vocab) = (model.config().hidden_size, model.config().vocab_size);
        let sess = self.sessions.get_mut(&s.session).ok_or(missing)?;
        sess.last_active = Instant::now();
        let id = &s.session;
        if !sess.scoring {
            return Err(EdgeError::InvalidArgument(format!("activation carries targets, but session {id} was opened to generate, not to score")));
        }
        if s.split.k != sess.split.k() {
            return Err(EdgeError::FailedPrecondition(format!("window computed with split k={} but scoring session {id} runs k={}", s.split.k, sess.split.k())));
        }
        let rows = match *s.hidden.shape() {
            [1, rows, h] if h == hidden_size && rows > 0 => rows,
            ref shape => return Err(EdgeError::InvalidArgument(format!("window shape {shape:?} is not [1, rows >= 1, {hidden_size}]"))),
        };
        if rows > model.config().context_length {
            return Err(EdgeError::InvalidArgument(format!("window of {rows} rows exceeds the model's context of {}", model.config().context_length)));
        }
        if s.targets.is_empty() || s.first_row + s.targets.len() > rows {
            return Err(EdgeError::InvalidArgument(format!(
                "{} targets from row {} do not fit a window of {rows} rows (need 1 to {} targets)",
                s.targets.len(),
                s.first_row,
                rows.saturating_sub(s.first_row)
            )));
        }
        if let Some((i, t)) = s.targets.iter().enumerate().find(|(_, t)| **t as usize >= vocab) {
            return Err(EdgeError::InvalidArgument(format!("target {i} is token id {t}, outside the vocabulary of {vocab}")));
        }
        let x = super::receive(self.calibration.as_deref(), model, sess.link, sess.split.k(), &s.hidden, &s.erased, 0)?;
        let started = Instant::now();
        let mut cache = KvCache::new(sess.split.edge_layers(model.n_layers()));
        let h = model.run_layers(&x, &mut cache)?;
        let logprob = split_core::perplexity::target_logprobs(model, &h, s.first_row, &s.targets)?;
        Ok(ScoreOut { logprob, queue, compute: started.elapsed() })
    }
}
