//! Arbitrary `events=` / `sources=` values: `Filter::parse` never panics,
//! accepts exactly what the SPEC's grammar accepts, and the accepted
//! filter's `matches` agrees with the reference matcher on arbitrary types
//! and on types built from the patterns themselves.

#![no_main]

use arbitrary::Arbitrary;
use herald::filter::Filter;
use herald_fuzz::reference::{self, RefFilter};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    events: Option<String>,
    sources: Option<String>,
    /// Free types and sources (mapped into the name alphabet).
    probes: Vec<(Vec<u8>, Vec<u8>)>,
    /// Segments put where patterns have `*` (may contain dots).
    fills: Vec<Vec<u8>>,
}

const NAME: &[u8] = b"abcxyzABZ0189_.:-";

fn name(bytes: &[u8], min: usize) -> String {
    let mut s: String = bytes
        .iter()
        .take(128)
        .map(|b| char::from(NAME[usize::from(*b) % NAME.len()]))
        .collect();
    while s.len() < min {
        s.push('a');
    }
    s
}

fuzz_target!(|input: Input| {
    let events = input.events.as_deref();
    let sources = input.sources.as_deref();
    let got = Filter::parse(events, sources);
    let want = RefFilter::parse(events, sources);
    let (filter, reference) = match (got, want) {
        (Ok(f), Some(r)) => (f, r),
        (Err(_), None) => return,
        (got, want) => panic!("{events:?} {sources:?}: herald {got:?}, spec {want:?}"),
    };

    // Probes: free ones, then types built from each pattern (`*` filled in,
    // one segment dropped or added) with each listed source.
    let mut probes: Vec<(String, String)> = input
        .probes
        .iter()
        .map(|(t, s)| (name(t, 1), name(s, 0)))
        .collect();
    let mut fills = input.fills.iter().map(|f| name(f, 1)).cycle();
    let mut candidate_sources: Vec<String> = reference.sources.clone();
    candidate_sources.push(String::new());
    for (n, pattern) in reference.patterns.iter().enumerate() {
        let segments: Vec<String> = pattern
            .iter()
            .map(|seg| match seg {
                Some(lit) => lit.clone(),
                None => fills.next().unwrap_or_else(|| "x".to_owned()),
            })
            .collect();
        let full = segments.join(".");
        let source = &candidate_sources[n % candidate_sources.len()];
        for t in [
            full.clone(),
            format!("{full}.more"),
            segments[..segments.len() - 1].join("."),
        ] {
            if reference::valid_type(&t) {
                probes.push((t, source.clone()));
            }
        }
    }
    for (t, s) in &probes {
        assert_eq!(
            filter.matches(t, s),
            reference.matches(t, s),
            "{events:?} {sources:?} on type {t:?} source {s:?}"
        );
        if filter.is_everything() {
            assert!(filter.matches(t, s));
        }
    }
    // Unvalidated input never panics either.
    for (t, s) in &input.probes {
        let _ = filter.matches(&String::from_utf8_lossy(t), &String::from_utf8_lossy(s));
    }
    // `is_everything` as the spec defines "no filter".
    let everything = reference.sources.is_empty()
        && (reference.patterns.is_empty()
            || reference.patterns.iter().any(|p| p.as_slice() == [None]));
    assert_eq!(filter.is_everything(), everything);
    // What the admin API shows parses back to the same filter.
    let shown = filter.to_string();
    let (e, s) = shown
        .strip_prefix("events=")
        .and_then(|rest| rest.split_once("&sources="))
        .expect("events=..&sources=..");
    assert_eq!(Filter::parse(Some(e), Some(s)).as_ref(), Ok(&filter));
});
