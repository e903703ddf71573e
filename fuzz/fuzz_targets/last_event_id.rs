//! Arbitrary text as a Last-Event-ID: `parse_ulid` never panics and accepts
//! exactly 26 Crockford characters, any case, the first 0–7; what it
//! accepts prints back as the same text in upper case.

#![no_main]

use arbitrary::Arbitrary;
use herald::event::parse_ulid;
use herald_fuzz::reference::{self, CROCKFORD};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text.
    Text(String),
    /// Any bytes, made text lossily.
    Bytes(Vec<u8>),
    /// A real id, with some letters lowered, then maybe one byte changed or
    /// some padding added.
    Id {
        value: u128,
        lower: u32,
        change: Option<(u8, u8)>,
        pad: Option<(bool, char)>,
    },
}

fn check(text: &str) {
    let got = parse_ulid(text);
    assert_eq!(got.map(|u| u.0), reference::ref_ulid(text), "{text:?}");
    if let Some(id) = got {
        assert_eq!(id.to_string(), text.to_ascii_uppercase());
        assert_eq!(parse_ulid(&id.to_string()), Some(id));
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Text(text) => check(&text),
        Input::Bytes(bytes) => check(&String::from_utf8_lossy(&bytes)),
        Input::Id {
            value,
            lower,
            change,
            pad,
        } => {
            let canonical = ulid::Ulid(value).to_string();
            assert!(canonical.len() == 26 && canonical.as_bytes()[0] <= b'7');
            let mut bytes: Vec<u8> = canonical
                .bytes()
                .enumerate()
                .map(|(i, b)| {
                    if lower >> (i % 32) & 1 == 1 {
                        b.to_ascii_lowercase()
                    } else {
                        b
                    }
                })
                .collect();
            let text = String::from_utf8(bytes.clone()).unwrap();
            assert_eq!(parse_ulid(&text).map(|u| u.0), Some(value));
            check(&text);
            if let Some((at, to)) = change {
                let at = usize::from(at) % bytes.len();
                bytes[at] = if to.is_ascii() {
                    to
                } else {
                    CROCKFORD[usize::from(to % 32)]
                };
                check(&String::from_utf8(bytes).unwrap());
            }
            if let Some((front, c)) = pad {
                let padded = if front {
                    format!("{c}{text}")
                } else {
                    format!("{text}{c}")
                };
                check(&padded);
            }
        }
    }
});
