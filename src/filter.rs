//! Subscription filters: `events=` type patterns and `sources=` lists,
//! parsed once per stream and matched without allocating.

use std::fmt;

use crate::event::{is_valid_name, MAX_NAME_LEN};

/// Most patterns (and most sources) one filter may hold.
pub const MAX_PATTERNS: usize = 64;

/// Why a filter was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FilterError(String);

/// One `events=` entry: dot-separated segments, `*` for any one segment, or
/// for one or more when it is the last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, FilterError> {
        if text.len() > MAX_NAME_LEN {
            return Err(FilterError(format!(
                "event pattern longer than {MAX_NAME_LEN} characters"
            )));
        }
        let segments = text
            .split('.')
            .map(|seg| match seg {
                "*" => Ok(Segment::Any),
                s if !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-')) =>
                {
                    Ok(Segment::Literal(s.to_owned()))
                }
                _ => Err(FilterError(format!(
                    "invalid event pattern `{}`: segments are [A-Za-z0-9_:-]+ or *",
                    shown(text)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    fn matches(&self, event_type: &str) -> bool {
        let mut parts = event_type.split('.');
        let last = self.segments.len() - 1;
        for (i, segment) in self.segments.iter().enumerate() {
            let Some(part) = parts.next() else {
                return false;
            };
            match segment {
                Segment::Any if i == last => return true,
                Segment::Any => {}
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return false,
            }
        }
        parts.next().is_none()
    }
}

/// A stream's filter. The default matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    patterns: Vec<Pattern>,
    sources: Vec<String>,
}

impl Filter {
    /// Parses the `events=` and `sources=` query values (absent = no filter).
    ///
    /// # Errors
    /// A malformed pattern or source, or more than [`MAX_PATTERNS`] entries.
    pub fn parse(events: Option<&str>, sources: Option<&str>) -> Result<Self, FilterError> {
        let patterns = entries(events.unwrap_or(""), "event patterns")?
            .map(Pattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let sources = entries(sources.unwrap_or(""), "sources")?
            .map(|s| {
                if is_valid_name(s, false) {
                    Ok(s.to_owned())
                } else {
                    Err(FilterError(format!(
                        "invalid source `{}`: 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . : -",
                        shown(s)
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { patterns, sources })
    }

    /// Whether an event of this type and source passes.
    pub fn matches(&self, event_type: &str, source: &str) -> bool {
        (self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(event_type)))
            && (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
    }

    /// Whether every event passes.
    pub fn is_everything(&self) -> bool {
        self.sources.is_empty()
            && (self.patterns.is_empty()
                || self.patterns.iter().any(|p| p.segments == [Segment::Any]))
    }
}

/// A refused entry as an error message quotes it: escaped, and cut after 64
/// characters (the rest of a long one tells the client nothing more).
fn shown(entry: &str) -> String {
    let mut chars = entry.chars();
    let head: String = chars.by_ref().take(64).collect();
    let more = if chars.next().is_some() { "…" } else { "" };
    format!("{}{more}", head.escape_default())
}

/// `events=a.*,b&sources=x` as the admin API shows it.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let patterns: Vec<&str> = self.patterns.iter().map(|p| p.text.as_str()).collect();
        write!(
            f,
            "events={}&sources={}",
            patterns.join(","),
            self.sources.join(",")
        )
    }
}

/// Non-empty, trimmed comma-separated entries, at most [`MAX_PATTERNS`].
fn entries<'a>(
    list: &'a str,
    what: &str,
) -> Result<impl Iterator<Item = &'a str> + 'a, FilterError> {
    let iter = list.split(',').map(str::trim).filter(|s| !s.is_empty());
    if iter.clone().count() > MAX_PATTERNS {
        return Err(FilterError(format!("more than {MAX_PATTERNS} {what}")));
    }
    Ok(iter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(p: &str) -> Filter {
        Filter::parse(Some(p), None).unwrap()
    }

    #[test]
    fn wildcards_follow_the_spec() {
        let blog = events("blog.*");
        assert!(blog.matches("blog.post", ""));
        assert!(blog.matches("blog.post.created", ""));
        assert!(!blog.matches("blog", ""));
        assert!(!blog.matches("blogs.post", ""));
        let created = events("*.created");
        assert!(created.matches("user.created", ""));
        assert!(!created.matches("a.b.created", ""));
        assert!(!created.matches("created", ""));
        assert!(events("*").matches("anything.at.all", ""));
        assert!(events("a.*.c").matches("a.b.c", ""));
        assert!(!events("a.*.c").matches("a.b.d", ""));
        assert!(events("map.system.added").matches("map.system.added", ""));
        assert!(!events("map.system").matches("map.system.added", ""));
    }

    #[test]
    fn empty_entries_and_spaces_are_ignored() {
        let f = events(" a.b , ,c ");
        assert!(f.matches("a.b", "") && f.matches("c", "") && !f.matches("d", ""));
        assert!(Filter::parse(Some(""), Some("")).unwrap().is_everything());
        assert!(events("*").is_everything());
    }

    #[test]
    fn sources_are_exact() {
        let f = Filter::parse(None, Some("svc-a, svc-b")).unwrap();
        assert!(f.matches("x", "svc-a"));
        assert!(!f.matches("x", "svc"));
        assert!(!f.matches("x", ""));
        assert!(!f.is_everything());
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in ["a..b", "a.**", "a b", ".a", "a.", "a\nb", "é"] {
            assert!(Filter::parse(Some(bad), None).is_err(), "{bad:?} accepted");
        }
        assert!(Filter::parse(None, Some("a b")).is_err());
        let too_many = vec!["a"; MAX_PATTERNS + 1].join(",");
        assert!(Filter::parse(Some(&too_many), None).is_err());
        let enough = vec!["a"; MAX_PATTERNS].join(",");
        assert!(Filter::parse(Some(&enough), None).is_ok());
    }

    #[test]
    fn a_refused_entry_is_quoted_short() {
        let long = format!("{} {}", "s".repeat(3000), "t".repeat(3000));
        let message = Filter::parse(None, Some(&long)).unwrap_err().to_string();
        assert!(message.len() < 200, "{} bytes: {message}", message.len());
        assert!(
            message.contains(&format!("`{}…`", "s".repeat(64))),
            "{message}"
        );
        let message = Filter::parse(Some("a\nb"), None).unwrap_err().to_string();
        assert!(message.contains("`a\\nb`"), "{message}");
    }
}
