//! A payment's lifecycle: where a provider status sits in its subject's
//! flow, so that a late status can be recognised as a regression.
//!
//! Each event with a subject id gets, at admission and atomically with it
//! (see `store`), a `sequence` (1, 2, 3, … per subject, in admission
//! order), the `previous_status` of the subject's previous event, and
//! `regression`: whether its status ranks below a status already admitted
//! for the subject. The ranks are the providers' documented flows; every
//! final status has the same rank, so moves between them (finished →
//! refunded, a payout failed then finished after a retry on the provider's
//! side) are not regressions. A status this table does not know has no
//! rank: it is never a regression and does not raise the subject's rank.
//! The table is in docs/lifecycle.md.

/// The final rank: every status that ends a flow.
const FINAL: u8 = u8::MAX;

/// The rank of `status` for a subject of `kind` from a provider of kind
/// `provider`; `None` when the flow does not know it. Statuses compare
/// case-insensitively (NOWPayments sends payout statuses in capitals).
pub fn rank(provider: &str, kind: &str, status: &str) -> Option<u8> {
    let status = status.to_ascii_lowercase();
    match (provider, kind) {
        ("nowpayments", "payment") => match status.as_str() {
            "waiting" => Some(1),
            "confirming" => Some(2),
            "confirmed" => Some(3),
            "sending" => Some(4),
            "partially_paid" => Some(5),
            "finished" | "failed" | "expired" | "refunded" => Some(FINAL),
            _ => None,
        },
        ("nowpayments", "payout") => match status.as_str() {
            "creating" => Some(1),
            "waiting" => Some(2),
            "processing" => Some(3),
            "sending" => Some(4),
            "finished" | "failed" | "rejected" | "cancelled" => Some(FINAL),
            _ => None,
        },
        // Nova's status is its event name, `kind.word`: the word says where
        // in the flow it is, whatever the kind.
        ("nova", _) => match status.split_once('.') {
            Some((k, word)) if k == kind => match word {
                "created" => Some(1),
                "pending" | "waiting" => Some(2),
                "processing" | "confirming" => Some(3),
                "confirmed" | "completed" | "failed" | "refunded" | "cancelled" | "expired" | "rejected" => Some(FINAL),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// What admission needs to number an event in its subject's lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectRef {
    /// `source/kind/id`: the subject's key in the store. Source names and
    /// kinds hold no `/`, so two subjects never share a key.
    pub key: String,
    /// The event's provider status as JSON text (`"finished"`, or `null`),
    /// stored as the next event's `previous_status`.
    pub status_json: String,
    pub rank: Option<u8>,
}

impl SubjectRef {
    /// The subject (`kind`, `id`) of an event from `source` (a configured
    /// name, of provider kind `provider`); `None` without a subject id.
    pub fn of(source: &str, provider: &str, kind: &str, id: Option<&str>, status: Option<&str>) -> Option<SubjectRef> {
        Some(SubjectRef {
            key: key(source, kind, id?),
            status_json: serde_json::to_string(&status).expect("a string serialises"),
            rank: status.and_then(|s| rank(provider, kind, s)),
        })
    }
}

/// The store key of a subject.
pub fn key(source: &str, kind: &str, id: &str) -> String {
    format!("{source}/{kind}/{id}")
}

/// What admission decided: the event's place in its subject's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    pub sequence: u64,
    /// The previous event's provider status as JSON text (`null` for the
    /// first event, or when it had none).
    pub previous_status_json: String,
    pub regression: bool,
}

impl Sequenced {
    /// Numbers the next event of a subject whose last event was number
    /// `last` with status `last_status_json` and whose highest rank so far
    /// is `max_rank`. Both stores call this (the Redis script mirrors it).
    pub fn next(last: Option<(u64, String)>, max_rank: Option<u8>, rank: Option<u8>) -> Sequenced {
        let (sequence, previous_status_json) = match last {
            Some((n, status)) => (n + 1, status),
            None => (1, "null".to_owned()),
        };
        let regression = matches!((rank, max_rank), (Some(r), Some(m)) if r < m);
        Sequenced { sequence, previous_status_json, regression }
    }

    /// The event fields this adds, as JSON text starting with a comma.
    pub fn fields(&self) -> String {
        format!(
            r#","sequence":{},"previous_status":{},"regression":{}"#,
            self.sequence, self.previous_status_json, self.regression
        )
    }
}

/// The fields of an event without a subject.
pub const NO_SEQUENCE: &str = r#","sequence":null,"previous_status":null,"regression":false"#;

/// Splices `fields` into an event's JSON at byte `at` (where
/// `Event::to_json` left room for them).
pub fn splice(json: &[u8], at: usize, fields: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + fields.len());
    out.extend_from_slice(&json[..at]);
    out.extend_from_slice(fields.as_bytes());
    out.extend_from_slice(&json[at..]);
    out
}

/// A stored event's subject key and sequence, if it was numbered: what
/// retention needs to take it off its subject's timeline.
pub fn numbered(json: &[u8]) -> Option<(String, u64)> {
    #[derive(serde::Deserialize)]
    struct Id {
        kind: String,
        id: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Numbered {
        source: String,
        subject: Id,
        sequence: Option<u64>,
    }
    let n: Numbered = serde_json::from_slice(json).ok()?;
    Some((key(&n.source, &n.subject.kind, n.subject.id.as_deref()?), n.sequence?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ordered pair of statuses of a flow: a regression exactly when
    /// the second comes earlier in the flow than the first (all finals
    /// share the last place).
    fn check_flow(provider: &str, kind: &str, flow: &[&str], finals: &[&str]) {
        let all: Vec<&str> = flow.iter().chain(finals).copied().collect();
        let place = |s: &str| flow.iter().position(|f| *f == s).unwrap_or(flow.len());
        for a in &all {
            for b in &all {
                let (ra, rb) = (rank(provider, kind, a), rank(provider, kind, b));
                let got = Sequenced::next(Some((1, "\"x\"".into())), ra, rb).regression;
                let want = place(b) < place(a);
                assert_eq!(got, want, "{provider} {kind}: {a} then {b}");
            }
        }
    }

    #[test]
    fn nowpayments_payment_pairs() {
        check_flow(
            "nowpayments",
            "payment",
            &["waiting", "confirming", "confirmed", "sending", "partially_paid"],
            &["finished", "failed", "expired", "refunded"],
        );
        // The case the issue names, and capitals.
        assert!(
            Sequenced::next(
                None,
                rank("nowpayments", "payment", "FINISHED"),
                rank("nowpayments", "payment", "confirming")
            )
            .regression
        );
    }

    #[test]
    fn nowpayments_payout_pairs() {
        check_flow(
            "nowpayments",
            "payout",
            &["creating", "waiting", "processing", "sending"],
            &["finished", "failed", "rejected", "cancelled"],
        );
        assert_eq!(rank("nowpayments", "payout", "FINISHED"), Some(FINAL));
    }

    #[test]
    fn nova_pairs() {
        for kind in ["deposit", "payout", "transfer"] {
            let e = |w: &str| format!("{kind}.{w}");
            let flow = [e("created"), e("pending"), e("processing")];
            let finals = [e("confirmed"), e("completed"), e("failed"), e("refunded")];
            let flow: Vec<&str> = flow.iter().map(String::as_str).collect();
            let finals: Vec<&str> = finals.iter().map(String::as_str).collect();
            check_flow("nova", kind, &flow, &finals);
        }
        // Another kind's name, or an unknown word: no rank.
        assert_eq!(rank("nova", "deposit", "payout.completed"), None);
        assert_eq!(rank("nova", "deposit", "deposit.reviewed"), None);
    }

    #[test]
    fn unknown_statuses_are_never_regressions_and_do_not_raise_the_rank() {
        let finished = rank("nowpayments", "payment", "finished");
        assert!(!Sequenced::next(None, finished, rank("nowpayments", "payment", "on_hold")).regression);
        assert!(!Sequenced::next(None, None, rank("nowpayments", "payment", "waiting")).regression);
        assert_eq!(rank("nowpayments", "unknown", "finished"), None);
    }

    #[test]
    fn numbering_and_fields() {
        let first = Sequenced::next(None, None, Some(1));
        assert_eq!(first.fields(), r#","sequence":1,"previous_status":null,"regression":false"#);
        let second = Sequenced::next(Some((1, "\"waiting\"".into())), Some(FINAL), Some(1));
        assert_eq!(second.fields(), r#","sequence":2,"previous_status":"waiting","regression":true"#);
        assert_eq!(splice(b"{\"a\":1,\"payload\":{}}", 6, &second.fields())[..7], *b"{\"a\":1,");
    }

    #[test]
    fn subjects_without_an_id_are_not_numbered() {
        assert_eq!(SubjectRef::of("np", "nowpayments", "unknown", None, Some("x")), None);
        let r = SubjectRef::of("np", "nowpayments", "payment", Some("5077125051"), Some("finished")).unwrap();
        assert_eq!(
            (r.key.as_str(), r.status_json.as_str(), r.rank),
            ("np/payment/5077125051", "\"finished\"", Some(FINAL))
        );
    }
}
