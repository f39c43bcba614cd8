use super::*;
use proptest::prelude::*;
use vigil_api::v1alpha1::Feature;

fn tier(size: i64, slide: i64, ooo: i64, lateness: i64) -> TierConfig {
    let gcd = |mut a: i64, mut b: i64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    TierConfig {
        name: "t".into(),
        size_ms: size,
        slide_ms: slide,
        pane_ms: gcd(size, slide),
        max_out_of_orderness_ms: ooo,
        allowed_lateness_ms: lateness,
        idle_timeout_ms: 30_000,
    }
}

#[test]
fn hopping_assignment_covers_size_over_slide_windows() {
    let t = tier(30_000, 15_000, 0, 0);
    assert_eq!(
        window_starts(&t, 31_000).collect::<Vec<_>>(),
        vec![30_000, 15_000]
    );
    assert_eq!(
        window_starts(&t, 30_000).collect::<Vec<_>>(),
        vec![30_000, 15_000]
    );
    let tumbling = tier(60_000, 60_000, 0, 0);
    assert_eq!(
        window_starts(&tumbling, 59_999).collect::<Vec<_>>(),
        vec![0]
    );
    // Negative event times align downwards.
    assert_eq!(
        window_starts(&tumbling, -1).collect::<Vec<_>>(),
        vec![-60_000]
    );
    // Slide not dividing size: windows of 25s every 10s.
    let odd = tier(25_000, 10_000, 0, 0);
    assert_eq!(odd.pane_ms, 5_000);
    assert_eq!(
        window_starts(&odd, 22_000).collect::<Vec<_>>(),
        vec![20_000, 10_000, 0]
    );
}

#[test]
fn lateness_boundaries() {
    let t = tier(30_000, 15_000, 0, 10_000);
    // Event at 20s: last window holding it is [15s, 45s), so it is late once wm >= 55s.
    assert!(!is_late(&t, Watermark::EventTime(54_999), 20_000));
    assert!(is_late(&t, Watermark::EventTime(55_000), 20_000));
    assert!(!is_late(&t, Watermark::Initial, 20_000));
    assert!(is_late(&t, Watermark::EndOfInput, 20_000));
}

#[test]
fn purge_keeps_panes_until_last_window_plus_lateness() {
    let t = tier(30_000, 15_000, 0, 5_000);
    let mut k = KeyWindows::new();
    k.add(&t, 1_000, 0, 1.0, 7, false);
    k.add(&t, 16_000, 0, 2.0, 8, false);
    assert_eq!(k.min_offset(), Some(7));
    // Pane [0, 15s) is last in window [0, 30s): kept until that window fired and wm >= 35s.
    k.purge(&t, 40_000);
    assert_eq!(k.pane_count(), 2, "window [0, 30s) has not fired");
    k.last_fired_end = 30_000;
    k.purge(&t, 34_999);
    assert_eq!(k.pane_count(), 2);
    k.purge(&t, 35_000);
    assert_eq!(k.pane_count(), 1);
    assert_eq!(k.min_offset(), Some(8));
}

proptest! {
    /// For any events in any order, each window's features equal a naive recomputation over
    /// the events whose time falls in the window.
    #[test]
    fn windows_match_naive(events in prop::collection::vec((0i64..200_000, -50.0f64..50.0), 1..150)) {
        let t = tier(30_000, 10_000, 0, 0);
        let mut k = KeyWindows::new();
        for (i, &(ts, v)) in events.iter().enumerate() {
            k.add(&t, ts, 0, v, i as i64, false);
        }
        for start in (-20_000..200_000).step_by(10_000) {
            let inside: Vec<f64> = events.iter().filter(|e| e.0 >= start && e.0 < start + 30_000).map(|e| e.1).collect();
            let got = k.window(&t, start, false);
            if inside.is_empty() {
                prop_assert!(got.is_empty());
                continue;
            }
            let f = got[0].1;
            let n = inside.len() as f64;
            let mean = inside.iter().sum::<f64>() / n;
            prop_assert_eq!(f.get(Feature::Count), n);
            prop_assert!((f.get(Feature::Mean) - mean).abs() < 1e-9);
            prop_assert_eq!(f.get(Feature::Max), inside.iter().cloned().fold(f64::MIN, f64::max));
            prop_assert_eq!(f.get(Feature::Min), inside.iter().cloned().fold(f64::MAX, f64::min));
        }
    }
}

#[test]
fn pane_memory_covers_the_held_panes_up_to_the_bound() {
    let t = tier(300_000, 60_000, 0, 0);
    let pane = std::mem::size_of::<Pane>();
    let mut w = KeyWindows::new();
    assert_eq!(w.pane_memory(4096).map(|(_, b)| b), [0, 0]);
    for i in 0..6 {
        w.add(&t, i * 60_000, 0, 1.0, i, false);
    }
    // Purging the oldest panes and adding new ones wraps the ring buffer around.
    w.last_fired_end = 360_000;
    w.purge(&t, 360_000);
    for i in 6..9 {
        w.add(&t, i * 60_000, 0, 1.0, i, false);
    }
    let held = w.pane_count();
    let [(a, a_bytes), (b, b_bytes)] = w.pane_memory(usize::MAX);
    assert_eq!(a_bytes + b_bytes, held * pane);
    let (front, back) = w.panes.as_slices();
    assert!(
        !back.is_empty(),
        "the ring buffer wraps: both parts are covered"
    );
    assert_eq!((a, b), (front.as_ptr(), back.as_ptr()));
    let bound = 2 * pane + 1;
    let [(_, a_bytes), (_, b_bytes)] = w.pane_memory(bound);
    assert_eq!(a_bytes + b_bytes, bound.min(held * pane));
    assert!(a_bytes <= bound && b_bytes <= bound - a_bytes);
}
