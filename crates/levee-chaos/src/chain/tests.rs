//! The toxic policies, stepped through explicit instants: no sockets, no
//! clock, no sleeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastrand::Rng;

use super::{Chain, Poll};
use crate::stage::{End, Item, cut};
use crate::toxic::{Kind, Stream, Toxic};

fn toxic(id: u64, kind: Kind) -> Arc<Toxic> {
    Arc::new(Toxic {
        id,
        revision: 0,
        name: format!("{}_{id}", kind.type_name()),
        kind,
        stream: Stream::Downstream,
        stream_label: "downstream".into(),
        toxicity: 1.0,
    })
}

fn data(n: usize, stamp: Instant) -> Item {
    Item::Data {
        bytes: Bytes::from(vec![7u8; n]),
        stamp,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Drives a chain as the pipe does, from `start` until `until` or its end:
/// each output with the instant it was written.
fn run(chain: &mut Chain, rng: &mut Rng, start: Instant, until: Instant) -> Vec<(Instant, Item)> {
    let mut now = start;
    let mut outs = Vec::new();
    for _ in 0..100_000 {
        match chain.poll(now, rng) {
            Poll::Ready(item) => {
                let end = matches!(item, Item::End(_));
                outs.push((now, item));
                if end {
                    break;
                }
            }
            Poll::Wait(Some(at)) if at <= until => {
                assert!(at > now, "a wake in the past would spin: {at:?} <= {now:?}");
                now = at;
            }
            Poll::Wait(_) => break,
        }
    }
    outs
}

fn bytes_out(outs: &[(Instant, Item)]) -> usize {
    outs.iter()
        .map(|(_, i)| match i {
            Item::Data { bytes, .. } => bytes.len(),
            Item::End(_) => 0,
        })
        .sum()
}

#[test]
fn without_toxics_everything_passes_at_once() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let mut c = Chain::new(&[], t0, &mut rng);
    c.push(data(10, t0), t0, &mut rng);
    c.push(Item::End(End::Eof), t0, &mut rng);
    assert!(matches!(c.poll(t0, &mut rng), Poll::Ready(Item::Data { .. })));
    assert_eq!(c.poll(t0, &mut rng), Poll::Ready(Item::End(End::Eof)));
    assert_eq!(c.poll(t0, &mut rng), Poll::Wait(None));
}

#[test]
fn latency_delays_each_chunk_from_its_read_without_adding_up() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let l = Kind::Latency(crate::toxic::Latency {
        latency: 300,
        jitter: 0,
    });
    let mut c = Chain::new(&[toxic(1, l)], t0, &mut rng);
    c.push(data(5, t0), t0, &mut rng);
    c.push(data(5, t0 + ms(10)), t0 + ms(10), &mut rng);
    assert_eq!(c.poll(t0 + ms(10), &mut rng), Poll::Wait(Some(t0 + ms(300))));
    assert_eq!(c.poll(t0 + ms(299), &mut rng), Poll::Wait(Some(t0 + ms(300))));
    assert!(matches!(c.poll(t0 + ms(300), &mut rng), Poll::Ready(_)));
    assert_eq!(c.poll(t0 + ms(300), &mut rng), Poll::Wait(Some(t0 + ms(310))));
    assert!(matches!(c.poll(t0 + ms(310), &mut rng), Poll::Ready(_)));
    // The end follows the data at once.
    c.push(Item::End(End::Eof), t0 + ms(400), &mut rng);
    assert_eq!(c.poll(t0 + ms(400), &mut rng), Poll::Ready(Item::End(End::Eof)));
}

#[test]
fn jitter_stays_within_its_bounds() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(7));
    let l = Kind::Latency(crate::toxic::Latency {
        latency: 100,
        jitter: 50,
    });
    let mut c = Chain::new(&[toxic(1, l)], t0, &mut rng);
    let (mut low, mut high) = (ms(1000), ms(0));
    for _ in 0..500 {
        c.push(data(1, t0), t0, &mut rng);
        let Poll::Wait(Some(at)) = c.poll(t0, &mut rng) else {
            panic!("waits")
        };
        let d = at - t0;
        (low, high) = (low.min(d), high.max(d));
        assert!(matches!(c.poll(at, &mut rng), Poll::Ready(_)));
    }
    assert!(low >= ms(50) && high < ms(150), "{low:?}..{high:?}");
    assert!(
        low < ms(60) && high > ms(140),
        "the draws cover the range: {low:?}..{high:?}"
    );
}

#[test]
fn bandwidth_sends_at_the_rate_in_100ms_slices() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let b = Kind::Bandwidth(crate::toxic::Bandwidth { rate: 100 });
    let mut c = Chain::new(&[toxic(1, b)], t0, &mut rng);
    // 200 KB at 100 KB/s: 20 slices of 10 000 bytes, the last at 2 s.
    for _ in 0..4 {
        c.push(data(50_000, t0), t0, &mut rng);
    }
    let outs = run(&mut c, &mut rng, t0, t0 + ms(10_000));
    assert_eq!(bytes_out(&outs), 200_000);
    assert_eq!(outs.len(), 20);
    assert!(
        outs.iter()
            .all(|(_, i)| matches!(i, Item::Data { bytes, .. } if bytes.len() == 10_000))
    );
    assert_eq!(outs[0].0, t0 + ms(100));
    assert_eq!(outs[19].0, t0 + ms(2000));
}

#[test]
fn an_idle_link_does_not_bank_bandwidth() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let b = Kind::Bandwidth(crate::toxic::Bandwidth { rate: 10 });
    let mut c = Chain::new(&[toxic(1, b)], t0, &mut rng);
    c.push(data(500, t0 + ms(5000)), t0 + ms(5000), &mut rng);
    // 500 bytes at 10 KB/s take 50 ms, counted from when they arrived.
    assert_eq!(c.poll(t0 + ms(5000), &mut rng), Poll::Wait(Some(t0 + ms(5050))));
}

#[test]
fn bandwidth_of_zero_passes_nothing() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let b = Kind::Bandwidth(crate::toxic::Bandwidth { rate: 0 });
    let mut c = Chain::new(&[toxic(1, b)], t0, &mut rng);
    c.push(data(500, t0), t0, &mut rng);
    assert_eq!(c.poll(t0 + ms(100_000), &mut rng), Poll::Wait(None));
    assert_eq!(c.held(), (500, 1));
}

#[test]
fn slow_close_delays_only_the_end() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let s = Kind::SlowClose(crate::toxic::SlowClose { delay: 250 });
    let mut c = Chain::new(&[toxic(1, s)], t0, &mut rng);
    c.push(data(3, t0), t0, &mut rng);
    c.push(Item::End(End::Eof), t0, &mut rng);
    assert!(matches!(c.poll(t0, &mut rng), Poll::Ready(Item::Data { .. })));
    assert_eq!(c.poll(t0, &mut rng), Poll::Wait(Some(t0 + ms(250))));
    assert_eq!(c.poll(t0 + ms(250), &mut rng), Poll::Ready(Item::End(End::Eof)));
}

#[test]
fn timeout_zero_drops_data_and_holds_the_connection() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let t = Kind::Timeout(crate::toxic::Timeout { timeout: 0 });
    let mut c = Chain::new(&[toxic(1, t)], t0, &mut rng);
    c.push(data(100, t0), t0, &mut rng);
    assert_eq!(c.poll(t0 + ms(3_600_000), &mut rng), Poll::Wait(None));
    assert_eq!(c.held(), (0, 0), "dropped, not buffered");
}

#[test]
fn timeout_closes_after_its_time_without_data() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let t = Kind::Timeout(crate::toxic::Timeout { timeout: 500 });
    let mut c = Chain::new(&[toxic(1, t)], t0, &mut rng);
    assert_eq!(c.poll(t0, &mut rng), Poll::Wait(Some(t0 + ms(500))));
    // Data restarts the count (as Toxiproxy's timer does) and is dropped.
    c.push(data(100, t0 + ms(300)), t0 + ms(300), &mut rng);
    assert_eq!(c.poll(t0 + ms(300), &mut rng), Poll::Wait(Some(t0 + ms(800))));
    assert_eq!(c.poll(t0 + ms(800), &mut rng), Poll::Ready(Item::End(End::Close)));
    assert_eq!(c.poll(t0 + ms(900), &mut rng), Poll::Wait(None));
}

#[test]
fn removing_a_timeout_closes_the_connection_it_held() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let t = toxic(1, Kind::Timeout(crate::toxic::Timeout { timeout: 0 }));
    let mut c = Chain::new(&[t], t0, &mut rng);
    c.push(data(100, t0), t0, &mut rng);
    assert_eq!(c.poll(t0, &mut rng), Poll::Wait(None));
    c.update(&[], t0 + ms(10), &mut rng);
    assert_eq!(c.poll(t0 + ms(10), &mut rng), Poll::Ready(Item::End(End::Close)));
}

#[test]
fn reset_peer_counts_from_the_first_item_and_drops_data() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let r = Kind::ResetPeer(crate::toxic::Timeout { timeout: 100 });
    let mut c = Chain::new(&[toxic(1, r)], t0, &mut rng);
    assert_eq!(c.poll(t0 + ms(1000), &mut rng), Poll::Wait(None));
    c.push(data(10, t0 + ms(1000)), t0 + ms(1000), &mut rng);
    c.push(data(10, t0 + ms(1050)), t0 + ms(1050), &mut rng);
    assert_eq!(c.poll(t0 + ms(1050), &mut rng), Poll::Wait(Some(t0 + ms(1100))));
    assert_eq!(
        c.poll(t0 + ms(1100), &mut rng),
        Poll::Ready(Item::End(End::Reset))
    );
    // An end from the source also starts it.
    let mut c = Chain::new(&[toxic(1, r)], t0, &mut rng);
    c.push(Item::End(End::Eof), t0, &mut rng);
    assert_eq!(c.poll(t0 + ms(100), &mut rng), Poll::Ready(Item::End(End::Reset)));
}

#[test]
fn slicer_cuts_chunks_and_spaces_the_pieces() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(3));
    let s = Kind::Slicer(crate::toxic::Slicer {
        average_size: 100,
        size_variation: 0,
        delay: 1000,
    });
    let mut c = Chain::new(&[toxic(1, s)], t0, &mut rng);
    c.push(data(1000, t0), t0, &mut rng);
    let outs = run(&mut c, &mut rng, t0, t0 + ms(1000));
    assert_eq!(bytes_out(&outs), 1000);
    // 1000 halves to 500, 250, 125, then 62 or 63: sixteen pieces, 1 ms apart.
    assert_eq!(outs.len(), 16);
    for (k, (at, item)) in outs.iter().enumerate() {
        assert_eq!(*at, t0 + ms(k as u64));
        assert!(matches!(item, Item::Data { bytes, .. } if (62..=63).contains(&bytes.len())));
    }
}

#[test]
fn slicing_any_chunk_gives_its_bytes_back_in_pieces() {
    let mut rng = Rng::with_seed(11);
    for _ in 0..2000 {
        let len = rng.usize(0..5000);
        let average = rng.i64(-5..300);
        let variation = rng.i64(-5..400);
        let pieces = cut(len, average, variation, &mut rng);
        assert_eq!(pieces.iter().sum::<usize>(), len, "{len} {average} {variation}");
        assert!(pieces.iter().all(|&p| p > 0));
    }
}

#[test]
fn limit_data_passes_exactly_the_allowance_then_closes() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let l = Kind::LimitData(crate::toxic::LimitData { bytes: 50 });
    let mut c = Chain::new(&[toxic(1, l)], t0, &mut rng);
    c.push(data(30, t0), t0, &mut rng);
    c.push(data(30, t0), t0, &mut rng);
    c.push(data(30, t0), t0, &mut rng);
    let outs = run(&mut c, &mut rng, t0, t0);
    assert_eq!(bytes_out(&outs), 50);
    assert_eq!(outs.last().map(|(_, i)| i.clone()), Some(Item::End(End::Close)));
    // An allowance of zero closes on the first data.
    let z = Kind::LimitData(crate::toxic::LimitData { bytes: 0 });
    let mut c = Chain::new(&[toxic(1, z)], t0, &mut rng);
    c.push(data(30, t0), t0, &mut rng);
    assert_eq!(c.poll(t0, &mut rng), Poll::Ready(Item::End(End::Close)));
}

#[test]
fn an_updated_limit_keeps_its_count() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let l = toxic(1, Kind::LimitData(crate::toxic::LimitData { bytes: 50 }));
    let mut c = Chain::new(&[Arc::clone(&l)], t0, &mut rng);
    c.push(data(40, t0), t0, &mut rng);
    assert_eq!(bytes_out(&run(&mut c, &mut rng, t0, t0)), 40);
    let mut raised = (*l).clone();
    raised.revision = 1;
    raised.kind = Kind::LimitData(crate::toxic::LimitData { bytes: 60 });
    c.update(&[Arc::new(raised)], t0, &mut rng);
    c.push(data(40, t0), t0, &mut rng);
    let outs = run(&mut c, &mut rng, t0, t0);
    assert_eq!(bytes_out(&outs), 20);
    assert_eq!(outs.last().map(|(_, i)| i.clone()), Some(Item::End(End::Close)));
}

#[test]
fn toxicity_is_a_draw_per_connection() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(5));
    let mut t = (*toxic(1, Kind::Noop)).clone();
    let mut count = |toxicity: f32, rng: &mut Rng| {
        t.toxicity = toxicity;
        let t = Arc::new(t.clone());
        (0..1000)
            .filter(|_| !Chain::new(&[Arc::clone(&t)], t0, rng).active().is_empty())
            .count()
    };
    assert_eq!(count(0.0, &mut rng), 0);
    assert_eq!(count(1.0, &mut rng), 1000);
    let half = count(0.5, &mut rng);
    assert!((400..600).contains(&half), "{half}");
}

#[test]
fn a_toxic_that_missed_passes_everything() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let mut t = (*toxic(1, Kind::Timeout(crate::toxic::Timeout { timeout: 0 }))).clone();
    t.toxicity = 0.0;
    let mut c = Chain::new(&[Arc::new(t)], t0, &mut rng);
    c.push(data(10, t0), t0, &mut rng);
    assert!(matches!(c.poll(t0, &mut rng), Poll::Ready(Item::Data { .. })));
}

#[test]
fn a_toxic_added_to_an_open_chain_acts_on_the_next_chunk() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let mut c = Chain::new(&[], t0, &mut rng);
    c.push(data(10, t0), t0, &mut rng);
    assert!(matches!(c.poll(t0, &mut rng), Poll::Ready(_)));
    let l = toxic(
        1,
        Kind::Latency(crate::toxic::Latency {
            latency: 200,
            jitter: 0,
        }),
    );
    c.update(&[l], t0 + ms(50), &mut rng);
    c.push(data(10, t0 + ms(60)), t0 + ms(60), &mut rng);
    assert_eq!(c.poll(t0 + ms(60), &mut rng), Poll::Wait(Some(t0 + ms(260))));
}

#[test]
fn a_removed_toxic_hands_on_what_it_held_at_once_and_in_order() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let slow = toxic(
        1,
        Kind::Latency(crate::toxic::Latency {
            latency: 10_000,
            jitter: 0,
        }),
    );
    let slower = toxic(
        2,
        Kind::Latency(crate::toxic::Latency {
            latency: 20_000,
            jitter: 0,
        }),
    );
    let mut c = Chain::new(&[Arc::clone(&slow), Arc::clone(&slower)], t0, &mut rng);
    let chunk = |b: u8, at| Item::Data {
        bytes: Bytes::from(vec![b]),
        stamp: at,
    };
    c.push(chunk(1, t0), t0, &mut rng);
    // The first chunk moves on to the second latency at 10 s; the second
    // is still in the first.
    assert!(matches!(c.poll(t0 + ms(10_000), &mut rng), Poll::Wait(Some(_))));
    c.push(chunk(2, t0 + ms(10_000)), t0 + ms(10_000), &mut rng);
    assert_eq!(c.held(), (2, 2));
    c.update(&[], t0 + ms(10_001), &mut rng);
    assert_eq!(
        c.poll(t0 + ms(10_001), &mut rng),
        Poll::Ready(chunk(1, t0 + ms(10_000)))
    );
    assert_eq!(
        c.poll(t0 + ms(10_001), &mut rng),
        Poll::Ready(chunk(2, t0 + ms(10_000)))
    );
}

#[test]
fn huge_attributes_do_not_overflow_the_clock() {
    let (t0, mut rng) = (Instant::now(), Rng::with_seed(1));
    let kinds = [
        Kind::Latency(crate::toxic::Latency {
            latency: i64::MAX,
            jitter: i64::MAX,
        }),
        Kind::Latency(crate::toxic::Latency {
            latency: i64::MIN,
            jitter: -1,
        }),
        Kind::Bandwidth(crate::toxic::Bandwidth { rate: i64::MAX }),
        Kind::Bandwidth(crate::toxic::Bandwidth { rate: 1 }),
        Kind::SlowClose(crate::toxic::SlowClose { delay: i64::MAX }),
        Kind::Timeout(crate::toxic::Timeout { timeout: i64::MAX }),
        Kind::ResetPeer(crate::toxic::Timeout { timeout: i64::MAX }),
        Kind::Slicer(crate::toxic::Slicer {
            average_size: i64::MAX,
            size_variation: i64::MAX,
            delay: i64::MAX,
        }),
        Kind::Slicer(crate::toxic::Slicer {
            average_size: 1,
            size_variation: i64::MAX,
            delay: -1,
        }),
        Kind::LimitData(crate::toxic::LimitData { bytes: i64::MAX }),
        Kind::LimitData(crate::toxic::LimitData { bytes: i64::MIN }),
    ];
    for k in kinds {
        let mut c = Chain::new(&[toxic(1, k)], t0, &mut rng);
        c.push(data(1000, t0), t0, &mut rng);
        c.push(Item::End(End::Eof), t0, &mut rng);
        let _ = run(&mut c, &mut rng, t0, t0 + ms(1000));
    }
}
