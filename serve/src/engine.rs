//! The scheduler, vLLM-style (its v1 engine): a waiting queue, a running
//! batch of at most `max_batch` sequences, and a token budget per
//! iteration. Each iteration every decoding sequence takes one token of
//! the budget; what is left goes to prefills — sequences part-way through
//! their prompt first, then new ones from the waiting queue, first come
//! first served — in chunks (chunked prefill). A sequence's first token
//! comes from the iteration that finishes its prefill.
//!
//! Pure: no clock, no GPU. [`Engine::plan`] says what the next iteration
//! does and what it costs ([`CostModel`]); the caller runs it on the GPU
//! and calls [`Engine::complete`], which says which tokens came out.

use crate::cost::CostModel;
use std::collections::VecDeque;

/// One request's sequence.
#[derive(Clone, Debug, PartialEq)]
struct Seq {
    id: u64,
    prompt: u64,
    max_tokens: u64,
    prefilled: u64,
    generated: u64,
    /// Prompt tokens this iteration prefills (0: it decodes).
    chunk: u64,
}

/// What an iteration does.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Compute-bound GPU time (the prompt chunks), at the whole device's
    /// speed (µs).
    pub compute_us: f64,
    /// Memory-bound GPU time (the weights read once, each decoding
    /// sequence's KV cache), at the whole device's bandwidth (µs).
    pub memory_us: f64,
    pub prefill_tokens: u64,
    pub decodes: u32,
}

impl Step {
    /// The iteration's GPU time on the whole device (µs): its compute and
    /// its memory traffic run one after the other.
    pub fn gpu_us(&self) -> f64 {
        self.compute_us + self.memory_us
    }
}

/// What an iteration produced for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Its first output token (its prefill finished).
    First(u64),
    /// One more output token.
    Token(u64),
    /// Its last token came (with the `First` or `Token` before it).
    Done(u64),
}

pub struct Engine {
    cost: CostModel,
    max_batch: usize,
    token_budget: u64,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    planned: bool,
}

impl Engine {
    pub fn new(cost: CostModel, max_batch: usize, token_budget: u64) -> Engine {
        Engine {
            cost,
            max_batch: max_batch.max(1),
            token_budget: token_budget.max(1),
            waiting: VecDeque::new(),
            running: Vec::new(),
            planned: false,
        }
    }

    /// Queues a request (`prompt` ≥ 1 tokens, `max_tokens` ≥ 1).
    pub fn add(&mut self, id: u64, prompt: u64, max_tokens: u64) {
        self.waiting.push_back(Seq {
            id,
            prompt: prompt.max(1),
            max_tokens: max_tokens.max(1),
            prefilled: 0,
            generated: 0,
            chunk: 0,
        });
    }

    /// Drops a request wherever it is (its client went away). Between
    /// iterations only.
    pub fn cancel(&mut self, id: u64) {
        debug_assert!(!self.planned);
        self.waiting.retain(|s| s.id != id);
        self.running.retain(|s| s.id != id);
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Plans the next iteration; `None` when there is nothing to do.
    pub fn plan(&mut self) -> Option<Step> {
        debug_assert!(!self.planned);
        let mut budget = self.token_budget;
        let mut decodes = 0u32;
        let mut kv_us = 0.0;
        for s in &mut self.running {
            s.chunk = 0;
            if s.prefilled == s.prompt && budget > 0 {
                budget -= 1;
                decodes += 1;
                kv_us += self.cost.kv_us(s.prompt + s.generated);
            }
        }
        let mut prefill = 0;
        for s in &mut self.running {
            if s.prefilled < s.prompt && budget > 0 {
                s.chunk = (s.prompt - s.prefilled).min(budget);
                budget -= s.chunk;
                prefill += s.chunk;
            }
        }
        while budget > 0 && self.running.len() < self.max_batch {
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            s.chunk = s.prompt.min(budget);
            budget -= s.chunk;
            prefill += s.chunk;
            self.running.push(s);
        }
        if decodes == 0 && prefill == 0 {
            return None;
        }
        self.planned = true;
        Some(Step {
            compute_us: self.cost.prefill_us(prefill),
            memory_us: self.cost.weights_us() + kv_us,
            prefill_tokens: prefill,
            decodes,
        })
    }

    /// Applies the planned iteration once the GPU ran it: what each request
    /// got, in the running batch's order.
    pub fn complete(&mut self) -> Vec<Event> {
        debug_assert!(self.planned);
        self.planned = false;
        let mut out = Vec::new();
        for s in &mut self.running {
            if s.chunk > 0 {
                s.prefilled += s.chunk;
                s.chunk = 0;
                if s.prefilled == s.prompt {
                    s.generated = 1;
                    out.push(Event::First(s.id));
                }
            } else if s.prefilled == s.prompt {
                s.generated += 1;
                out.push(Event::Token(s.id));
            } else {
                continue;
            }
            if s.generated >= s.max_tokens {
                out.push(Event::Done(s.id));
            }
        }
        self.running
            .retain(|s| !(s.prefilled == s.prompt && s.generated >= s.max_tokens));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(max_batch: usize, budget: u64) -> Engine {
        Engine::new(CostModel::h100(16.0), max_batch, budget)
    }

    /// Runs to the end; each request's (first-token iteration, done
    /// iteration).
    fn run(e: &mut Engine) -> std::collections::BTreeMap<u64, (usize, usize)> {
        let mut at = std::collections::BTreeMap::new();
        let mut i = 0;
        while e.plan().is_some() {
            i += 1;
            for ev in e.complete() {
                match ev {
                    Event::First(id) => {
                        at.insert(id, (i, 0));
                    }
                    Event::Done(id) => at.get_mut(&id).unwrap().1 = i,
                    Event::Token(_) => {}
                }
            }
            assert!(i < 10_000);
        }
        at
    }

    #[test]
    fn a_request_takes_its_prefill_then_one_token_an_iteration() {
        let mut e = engine(8, 4096);
        e.add(1, 100, 5);
        let s = e.plan().unwrap();
        assert_eq!((s.prefill_tokens, s.decodes), (100, 0));
        assert_eq!(e.complete(), [Event::First(1)]);
        for _ in 0..3 {
            assert_eq!(e.plan().unwrap().decodes, 1);
            assert_eq!(e.complete(), [Event::Token(1)]);
        }
        e.plan().unwrap();
        assert_eq!(e.complete(), [Event::Token(1), Event::Done(1)]);
        assert!(e.plan().is_none());
    }

    #[test]
    fn long_prompts_are_chunked_and_decodes_go_first() {
        let mut e = engine(8, 1000);
        e.add(1, 10, 100);
        e.plan().unwrap();
        e.complete();
        e.add(2, 2500, 1);
        // Decode of 1 (1 token) + 999 of 2's prompt, then 999, then 502.
        let chunks: Vec<(u64, u32)> = (0..3)
            .map(|_| {
                let s = e.plan().unwrap();
                e.complete();
                (s.prefill_tokens, s.decodes)
            })
            .collect();
        assert_eq!(chunks, [(999, 1), (999, 1), (502, 1)]);
        assert_eq!(e.running(), 1, "2 finished with its first token");
    }

    #[test]
    fn the_batch_is_bounded_and_the_rest_waits() {
        let mut e = engine(2, 8192);
        for id in 0..4 {
            e.add(id, 10, 3);
        }
        let at = run(&mut e);
        // 0 and 1 run first; 2 and 3 start when they finish.
        assert_eq!(at[&0], (1, 3));
        assert_eq!(at[&1], (1, 3));
        assert_eq!(at[&2].0, 4);
        assert_eq!(at[&3].0, 4);
    }

    #[test]
    fn a_step_costs_more_with_more_sequences_and_more_prompt() {
        let mut e = engine(64, 100_000);
        e.add(0, 10, 10);
        let one = e.plan().unwrap().gpu_us();
        e.complete();
        let mut f = engine(64, 100_000);
        f.add(0, 1000, 10);
        let long = f.plan().unwrap().gpu_us();
        assert!(long > one * 2.0, "{long} vs {one}");
        for id in 1..32 {
            e.add(id, 10, 10);
        }
        e.plan();
        e.complete();
        let decode_1 = {
            let mut g = engine(64, 100_000);
            g.add(0, 10, 10);
            g.plan();
            g.complete();
            g.plan().unwrap().gpu_us()
        };
        let decode_32 = e.plan().unwrap().gpu_us();
        assert!(decode_32 > decode_1, "{decode_32} vs {decode_1}");
    }

    #[test]
    fn a_cancelled_request_leaves() {
        let mut e = engine(4, 100);
        e.add(1, 10, 50);
        e.add(2, 10, 50);
        e.plan();
        e.complete();
        e.cancel(1);
        assert_eq!(e.running(), 1);
        e.plan();
        assert_eq!(e.complete(), [Event::Token(2)]);
    }
}
