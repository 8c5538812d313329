//! Bounds on what unauthenticated callers can make the tenant write: failed sign-ins are
//! limited per source address, the audit rows they cause are limited per minute for the whole
//! tenant (the rest summed up in one row), and every stored field is bounded. With identifiers
//! checked before anything is written (`valid_client_id`, `valid_username`) and smart-lockout
//! rows kept only for existing users, the growth an attacker can cause is a documented ceiling
//! (docs/tenant.md, "Limits"), whatever the number of requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// The address a request came from (set by the server on every request).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Failed sign-ins one source address may make per minute; then 429 until the minute ends.
pub const FAILURES_PER_SOURCE: u32 = 30;
/// Failed sign-ins the audit log records individually per minute, tenant-wide; the rest are
/// counted into one summary row.
pub const AUDITED_FAILURES_PER_MINUTE: u32 = 300;
/// Sources tracked at once; beyond, new sources share one bucket.
const MAX_SOURCES: usize = 65_536;
/// Longest audit field kept (characters).
pub const MAX_AUDIT_FIELD: usize = 256;

/// The longest userPrincipalName Entra takes: 64 characters, `@`, a domain of up to 48.
pub const MAX_UPN: usize = 113;

/// A client id as Entra issues them: a GUID.
pub fn valid_client_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// A sign-in name: a UPN within Entra's limits (no control characters).
pub fn valid_username(name: &str) -> bool {
    name.chars().count() <= MAX_UPN
        && name.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !name.chars().any(char::is_control)
}

/// `text` cut to at most `max` characters (on a character boundary), marked when cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[derive(Default)]
struct Window {
    minute: i64,
    sources: HashMap<Option<IpAddr>, u32>,
    audited: u32,
    /// Failures not audited individually in `minute`.
    suppressed: u64,
    /// An earlier minute's suppressed failures, not yet summed up in the audit log.
    carried: Option<(i64, u64)>,
}

impl Window {
    /// Moves on to `minute`, carrying what the last one suppressed.
    fn roll(&mut self, minute: i64) {
        if self.minute != minute {
            let carried = if self.suppressed > 0 { Some((self.minute, self.suppressed)) } else { self.carried.take() };
            *self = Window { minute, carried, ..Window::default() };
        }
    }
}

/// The failure counters (in memory, per process: each tenant process behind PostgreSQL keeps
/// its own, so the ceilings are per process).
#[derive(Default)]
pub struct FailureLimits {
    window: Mutex<Window>,
    /// Smart lockout for names that are no user: counted like users (so lockout tells nothing
    /// about who exists) but in memory, so guessing names writes nothing.
    unknown: Mutex<HashMap<String, (i64, i64)>>,
}

/// Names of no user tracked at once by smart lockout; beyond, unlocked ones are forgotten.
const MAX_UNKNOWN: usize = 100_000;

/// What the audit budget says about one failure row.
#[derive(Debug, PartialEq, Eq)]
pub enum AuditBudget {
    /// Write it.
    Write,
    /// Over the minute's budget: counted, not written.
    Suppressed,
}

impl FailureLimits {
    fn at(&self, minute: i64) -> std::sync::MutexGuard<'_, Window> {
        let mut window = self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        window.roll(minute);
        window
    }

    /// Seconds until `source` may try again, when it has used its failures of this minute.
    pub fn blocked(&self, source: Option<IpAddr>, now: i64) -> Option<u64> {
        let window = self.at(now / 60);
        let used = window.sources.get(&Self::key(&window, source)).copied().unwrap_or(0);
        (used >= FAILURES_PER_SOURCE).then(|| (60 - now.rem_euclid(60)).max(1) as u64)
    }

    /// Counts a failed sign-in of `source`.
    pub fn failed(&self, source: Option<IpAddr>, now: i64) {
        let mut window = self.at(now / 60);
        let key = Self::key(&window, source);
        *window.sources.entry(key).or_insert(0) += 1;
    }

    fn key(window: &Window, source: Option<IpAddr>) -> Option<IpAddr> {
        if window.sources.len() >= MAX_SOURCES && !window.sources.contains_key(&source) { None } else { source }
    }

    /// Smart lockout of a name that is no user: failures in a row and until when it is locked.
    pub fn unknown_entry(&self, name: &str) -> Option<(i64, i64)> {
        self.unknown.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(name).copied()
    }

    /// Counts a failure for a name that is no user, as `db::lockout_fail` does for users.
    pub fn unknown_failed(&self, name: &str, now: i64, threshold: u32, duration: i64) -> bool {
        let mut unknown = self.unknown.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if unknown.len() >= MAX_UNKNOWN && !unknown.contains_key(name) {
            unknown.retain(|_, (_, until)| *until > now);
            if unknown.len() >= MAX_UNKNOWN {
                unknown.clear();
            }
        }
        let entry = unknown.entry(name.to_string()).or_insert((0, 0));
        let failures = if entry.1 != 0 && entry.1 <= now { 1 } else { entry.0 + 1 };
        let locked = failures >= i64::from(threshold);
        *entry = (failures, if locked { now + duration } else { 0 });
        locked
    }

    /// Takes one failure row from this minute's audit budget. Also returns how many rows an
    /// earlier minute suppressed, once, for its summary row.
    pub fn audit(&self, now: i64) -> (AuditBudget, Option<(i64, u64)>) {
        let mut window = self.at(now / 60);
        let summary = window.carried.take();
        if window.audited < AUDITED_FAILURES_PER_MINUTE {
            window.audited += 1;
            (AuditBudget::Write, summary)
        } else {
            window.suppressed += 1;
            (AuditBudget::Suppressed, summary)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_guids() {
        assert!(valid_client_id("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        for bad in ["", "x", "0f1e2d3c4b5a69788796a5b4c3d2e1f00000", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg", &"a".repeat(100_000)] {
            assert!(!valid_client_id(bad), "{bad:.40}");
        }
    }

    #[test]
    fn usernames_have_entras_limits() {
        assert!(valid_username("ann@contoso.example"));
        assert!(!valid_username(&format!("{}@contoso.example", "a".repeat(100))));
        assert!(!valid_username("no-at-sign"));
        assert!(!valid_username("a\u{0}b@x"));
    }

    #[test]
    fn fields_are_cut_on_character_boundaries() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("ééééé", 2), "éé…");
    }

    #[test]
    fn a_source_is_blocked_after_its_failures_until_the_minute_ends() {
        let limits = FailureLimits::default();
        let (one, two): (Option<IpAddr>, Option<IpAddr>) = (Some([10, 0, 0, 1].into()), Some([10, 0, 0, 2].into()));
        for _ in 0..FAILURES_PER_SOURCE {
            assert_eq!(limits.blocked(one, 600), None);
            limits.failed(one, 600);
        }
        assert_eq!(limits.blocked(one, 610), Some(50));
        assert_eq!(limits.blocked(two, 610), None, "another source is not");
        assert_eq!(limits.blocked(one, 660), None, "a new minute");
    }

    #[test]
    fn the_audit_budget_suppresses_then_sums_up() {
        let limits = FailureLimits::default();
        for _ in 0..AUDITED_FAILURES_PER_MINUTE {
            assert_eq!(limits.audit(120).0, AuditBudget::Write);
        }
        assert_eq!(limits.audit(121), (AuditBudget::Suppressed, None));
        assert_eq!(limits.audit(122), (AuditBudget::Suppressed, None));
        limits.failed(None, 180);
        assert_eq!(limits.audit(180), (AuditBudget::Write, Some((2, 2))), "the next minute sums up the last");
        assert_eq!(limits.audit(181), (AuditBudget::Write, None));
    }
}
