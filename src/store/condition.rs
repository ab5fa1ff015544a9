//! Conditional requests (RFC 9110 §13): `If-Match` and `If-None-Match`
//! against the current version of a key, whose entity tag is its uuid.
//! Pure logic: the HTTP layer parses the headers, the writer evaluates a
//! write's condition inside its transaction, and a read evaluates it on
//! the version it found.

use super::{Stamp, VersionId};

/// The entity tags of one conditional header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tags {
    /// `*`: any current version.
    Any,
    /// A list of tags, each with whether it is weak (`W/"..."`). Tags that
    /// name no version of this store are left out: they match nothing.
    List(Vec<(bool, VersionId)>),
}

impl Tags {
    /// Parses a header value: `*`, or a comma-separated list of
    /// `"uuid"` / `W/"uuid"` (a bare uuid is taken as a strong tag, as
    /// earlier versions of kvs documented).
    pub fn parse(value: &str) -> Tags {
        let value = value.trim();
        if value == "*" {
            return Tags::Any;
        }
        let tags = value
            .split(',')
            .filter_map(|t| {
                let t = t.trim();
                let (weak, t) = match t.strip_prefix("W/") {
                    Some(rest) => (true, rest),
                    None => (false, t),
                };
                let inner = t
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .unwrap_or(t);
                VersionId::parse(inner).map(|id| (weak, id))
            })
            .collect();
        Tags::List(tags)
    }

    /// Strong comparison (for `If-Match`): a weak tag never matches.
    fn strong_match(&self, live: Option<&Stamp>) -> bool {
        match (self, live) {
            (_, None) => false,
            (Tags::Any, Some(_)) => true,
            (Tags::List(l), Some(s)) => l.iter().any(|(weak, id)| !weak && *id == s.uuid),
        }
    }

    /// Weak comparison (for `If-None-Match`).
    fn weak_match(&self, live: Option<&Stamp>) -> bool {
        match (self, live) {
            (_, None) => false,
            (Tags::Any, Some(_)) => true,
            (Tags::List(l), Some(s)) => l.iter().any(|(_, id)| *id == s.uuid),
        }
    }
}

/// The conditions of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    pub if_match: Option<Tags>,
    pub if_none_match: Option<Tags>,
}

/// What a condition says about the current version (`None`: the key holds
/// no live value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the request.
    Proceed,
    /// `If-Match` failed: `412`.
    Failed,
    /// `If-None-Match` matched: `304` for a read, `412` for a write.
    NotModified,
}

impl Condition {
    /// Evaluates the conditions in RFC 9110's order (§13.2.2): `If-Match`
    /// first, then `If-None-Match`.
    pub fn evaluate(&self, live: Option<&Stamp>) -> Verdict {
        if let Some(tags) = &self.if_match {
            if !tags.strong_match(live) {
                return Verdict::Failed;
            }
        }
        if let Some(tags) = &self.if_none_match {
            if tags.weak_match(live) {
                return Verdict::NotModified;
            }
        }
        Verdict::Proceed
    }

    /// Whether a write may go on.
    pub fn holds(&self, live: Option<&Stamp>) -> bool {
        self.evaluate(live) == Verdict::Proceed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            timestamp: 1,
            uuid: VersionId::new_random(),
            deleted: false,
        }
    }

    fn cond(if_match: Option<&str>, if_none_match: Option<&str>) -> Condition {
        Condition {
            if_match: if_match.map(Tags::parse),
            if_none_match: if_none_match.map(Tags::parse),
        }
    }

    #[test]
    fn tags_parse_as_rfc_9110_writes_them() {
        let a = VersionId::new_random();
        let b = VersionId::new_random();
        assert_eq!(Tags::parse(" * "), Tags::Any);
        assert_eq!(
            Tags::parse(&format!("\"{a}\", W/\"{b}\", \"nonsense\", {a}")),
            Tags::List(vec![(false, a), (true, b), (false, a)])
        );
        assert_eq!(Tags::parse("\"x\""), Tags::List(vec![]));
    }

    #[test]
    fn if_match_compares_strongly_and_lists_match_any() {
        let s = stamp();
        let other = VersionId::new_random();
        let tag = format!("\"{}\"", s.uuid);
        assert!(cond(Some(&tag), None).holds(Some(&s)));
        assert!(cond(Some(&format!("\"{other}\", {tag}")), None).holds(Some(&s)));
        // A weak tag never matches If-Match.
        assert_eq!(
            cond(Some(&format!("W/{tag}")), None).evaluate(Some(&s)),
            Verdict::Failed
        );
        // A tag that matches nothing is a failed condition, not a bad request.
        assert_eq!(
            cond(Some("\"garbage\""), None).evaluate(Some(&s)),
            Verdict::Failed
        );
        assert!(cond(Some("*"), None).holds(Some(&s)));
        assert_eq!(cond(Some("*"), None).evaluate(None), Verdict::Failed);
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let s = stamp();
        let tag = format!("\"{}\"", s.uuid);
        assert_eq!(
            cond(None, Some(&tag)).evaluate(Some(&s)),
            Verdict::NotModified
        );
        assert_eq!(
            cond(None, Some(&format!("W/{tag}"))).evaluate(Some(&s)),
            Verdict::NotModified
        );
        assert_eq!(
            cond(None, Some("*")).evaluate(Some(&s)),
            Verdict::NotModified
        );
        assert_eq!(cond(None, Some("*")).evaluate(None), Verdict::Proceed);
        let other = format!("\"{}\"", VersionId::new_random());
        assert_eq!(
            cond(None, Some(&other)).evaluate(Some(&s)),
            Verdict::Proceed
        );
        // If-Match is evaluated first.
        assert_eq!(
            cond(Some(&other), Some(&tag)).evaluate(Some(&s)),
            Verdict::Failed
        );
        assert_eq!(Condition::default().evaluate(None), Verdict::Proceed);
    }
}
