//! A direction's toxics in order, as one pure state machine: bytes read
//! from the source go in, what the destination should get comes out when
//! it is due, and the toxic list can change at any point (toxics act on
//! connections already open, as Toxiproxy's do).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use fastrand::Rng;

use crate::stage::{Item, Stage};
use crate::toxic::Toxic;

/// What the chain has for the destination.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Write this (or end the direction) now.
    Ready(Item),
    /// Nothing is due before this instant; `None`: not before new input
    /// or a change of toxics.
    Wait(Option<Instant>),
}

/// One direction's toxics.
#[derive(Debug)]
pub struct Chain {
    stages: Vec<Stage>,
    /// Items through every stage, waiting for the destination.
    out: VecDeque<Item>,
}

impl Chain {
    pub fn new(toxics: &[Arc<Toxic>], now: Instant, rng: &mut Rng) -> Chain {
        let stages = toxics
            .iter()
            .map(|t| Stage::new(Arc::clone(t), now, rng))
            .collect();
        Chain {
            stages,
            out: VecDeque::new(),
        }
    }

    /// Input from the source, at `now`.
    pub fn push(&mut self, item: Item, now: Instant, rng: &mut Rng) {
        match self.stages.first_mut() {
            Some(first) => first.accept(item, now, rng),
            None => self.out.push_back(item),
        }
    }

    /// Moves everything due at `now` as far as it goes, then hands out
    /// the first item for the destination.
    pub fn poll(&mut self, now: Instant, rng: &mut Rng) -> Poll {
        // One sweep in order is enough: what a stage emits is accepted by
        // the next before that one is asked.
        for i in 0..self.stages.len() {
            let (head, tail) = self.stages.split_at_mut(i + 1);
            let stage = &mut head[i];
            while let Some(item) = stage.emit(now, rng) {
                match tail.first_mut() {
                    Some(next) => next.accept(item, now, rng),
                    None => self.out.push_back(item),
                }
            }
        }
        match self.out.pop_front() {
            Some(item) => Poll::Ready(item),
            None => Poll::Wait(self.stages.iter().filter_map(Stage::wake).min()),
        }
    }

    /// Bytes and items held in the chain: the reader stops reading while
    /// this is over its bound, so a slow toxic pushes back on the source
    /// instead of buffering it.
    pub fn held(&self) -> (usize, usize) {
        let out = self.out.iter().map(|i| match i {
            Item::Data { bytes, .. } => bytes.len(),
            Item::End(_) => 0,
        });
        let (mut bytes, mut items) = (out.sum::<usize>(), self.out.len());
        for s in &self.stages {
            let (b, n) = s.held();
            bytes += b;
            items += n;
        }
        (bytes, items)
    }

    /// The toxic list changed. Kept toxics keep their state and what they
    /// hold (updated ones redraw their toxicity); a removed toxic's items
    /// go on to the next stage; new toxics join at the end.
    pub fn update(&mut self, toxics: &[Arc<Toxic>], now: Instant, rng: &mut Rng) {
        let old = std::mem::take(&mut self.stages);
        // Items from removed stages, oldest first, waiting for the next
        // kept stage. A removed stage's items are older than those of the
        // removed stages before it, so they go in front.
        let mut carry: VecDeque<Item> = VecDeque::new();
        for mut stage in old {
            let Some(toxic) = toxics.iter().find(|t| t.id == stage.toxic().id) else {
                let mut items: VecDeque<Item> = stage.remove().into();
                items.append(&mut carry);
                carry = items;
                continue;
            };
            if toxic.revision != stage.toxic().revision {
                stage.reconfigure(Arc::clone(toxic), now, rng);
            }
            for item in carry.drain(..) {
                stage.accept(item, now, rng);
            }
            self.stages.push(stage);
        }
        let known: Vec<u64> = self.stages.iter().map(|s| s.toxic().id).collect();
        for toxic in toxics.iter().filter(|t| !known.contains(&t.id)) {
            let mut stage = Stage::new(Arc::clone(toxic), now, rng);
            for item in carry.drain(..) {
                stage.accept(item, now, rng);
            }
            self.stages.push(stage);
        }
        self.out.extend(carry);
    }

    /// Which toxics took hold on this connection, by name (for logs and
    /// tests).
    pub fn active(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|s| s.is_active())
            .map(|s| s.toxic().name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests;
