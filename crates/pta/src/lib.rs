//! Pass-through authentication, the parts that are arithmetic and vocabulary:
//!
//! - [`Outcome`]: what an on-premises password check can say, with the AADSTS code and OAuth
//!   error the tenant answers with, and [`Outcome::from_bind`], which reads an Active Directory
//!   bind result (`49` with `data 52e`, `533`, `775` …) into one;
//! - [`seal`] / [`AgentKey::open`]: the password sealed to one agent's X25519 public key
//!   (ephemeral X25519, HKDF-SHA256, AES-256-GCM, the request bound in as associated data), so
//!   only that agent can read it and a ciphertext moved to another request or user fails;
//! - the agent protocol's messages ([`Registration`], [`Registered`], [`Work`], [`Answer`]).
//!
//! No network, no clock, no randomness: callers pass the ephemeral secret in. The tenant seals,
//! the agent (`isthmus pta-agent`) opens.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// What an on-premises password check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The password is right and the account may sign in now.
    Valid,
    /// Wrong password (or no such account: AD does not say which).
    BadPassword,
    /// The account is disabled.
    Disabled,
    /// The account is locked out in AD.
    LockedOut,
    /// The password has expired (the domain's maximum password age).
    PasswordExpired,
    /// The password must be changed at the next logon (`pwdLastSet` = 0).
    MustChangePassword,
    /// The account has expired (`accountExpires`).
    AccountExpired,
    /// Outside the account's logon hours.
    LogonHours,
    /// The agent's machine is not in the account's "Log On To" list.
    Workstation,
    /// No domain controller answered.
    DcUnreachable,
    /// The agent could not open the sealed password (not for its key, or tampered with).
    DecryptFailed,
    /// The agent could not read the request.
    InvalidRequest,
    /// Any other failure on the agent's side.
    AgentError,
}

impl Outcome {
    /// Every outcome, for tests and documentation.
    pub const ALL: [Outcome; 13] = [
        Outcome::Valid,
        Outcome::BadPassword,
        Outcome::Disabled,
        Outcome::LockedOut,
        Outcome::PasswordExpired,
        Outcome::MustChangePassword,
        Outcome::AccountExpired,
        Outcome::LogonHours,
        Outcome::Workstation,
        Outcome::DcUnreachable,
        Outcome::DecryptFailed,
        Outcome::InvalidRequest,
        Outcome::AgentError,
    ];

    /// The name on the wire (and in metrics), e.g. `badPassword`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::BadPassword => "badPassword",
            Outcome::Disabled => "disabled",
            Outcome::LockedOut => "lockedOut",
            Outcome::PasswordExpired => "passwordExpired",
            Outcome::MustChangePassword => "mustChangePassword",
            Outcome::AccountExpired => "accountExpired",
            Outcome::LogonHours => "logonHours",
            Outcome::Workstation => "workstation",
            Outcome::DcUnreachable => "dcUnreachable",
            Outcome::DecryptFailed => "decryptFailed",
            Outcome::InvalidRequest => "invalidRequest",
            Outcome::AgentError => "agentError",
        }
    }

    /// The AADSTS code the token endpoint answers with (0 for [`Outcome::Valid`]). Entra's
    /// codes where Entra has one; 80016 (account expired) and 80017 (workstation restriction)
    /// are Isthmus's, in Entra's pass-through range.
    pub fn code(self) -> u32 {
        match self {
            Outcome::Valid => 0,
            Outcome::BadPassword => 50126,
            Outcome::Disabled => 50057,
            Outcome::LockedOut => 50053,
            Outcome::PasswordExpired => 50144,
            Outcome::MustChangePassword => 50055,
            Outcome::AccountExpired => 80016,
            Outcome::LogonHours => 80012,
            Outcome::Workstation => 80017,
            Outcome::DcUnreachable => 80007,
            Outcome::DecryptFailed => 80010,
            Outcome::InvalidRequest => 80003,
            Outcome::AgentError => 80005,
        }
    }

    /// The OAuth `error`: `invalid_grant` for the account's own state, `temporarily_unavailable`
    /// for failures a retry may cure.
    pub fn oauth_error(self) -> &'static str {
        if self.is_retryable() { "temporarily_unavailable" } else { "invalid_grant" }
    }

    /// A failure of the machinery rather than an answer about the account.
    pub fn is_retryable(self) -> bool {
        matches!(self, Outcome::DcUnreachable | Outcome::DecryptFailed | Outcome::InvalidRequest | Outcome::AgentError)
    }

    /// Whether the attempt counts toward the tenant's smart lockout (a guessed password).
    pub fn counts_as_failure(self) -> bool {
        self == Outcome::BadPassword
    }

    /// The message shown to the user.
    pub fn message(self) -> &'static str {
        match self {
            Outcome::Valid => "The password is valid.",
            Outcome::BadPassword => "Error validating credentials due to invalid username or password.",
            Outcome::Disabled => "The user account is disabled.",
            Outcome::LockedOut => "The account is locked in the on-premises directory. Try again later or contact your administrator.",
            Outcome::PasswordExpired => "The on-premises password has expired. Change it on-premises.",
            Outcome::MustChangePassword => "The password must be changed (set on-premises at the next logon). Change it on-premises.",
            Outcome::AccountExpired => "The on-premises account has expired.",
            Outcome::LogonHours => "The account may not sign in at this time (on-premises logon hours).",
            Outcome::Workstation => {
                "The account may not sign in from the authentication agent's computer (on-premises \"Log On To\" list)."
            }
            Outcome::DcUnreachable => "The authentication agent could not reach a domain controller. Try again.",
            Outcome::DecryptFailed => "The authentication agent could not decrypt the password. Try again.",
            Outcome::InvalidRequest => "The authentication agent received an invalid request. Try again.",
            Outcome::AgentError => "The authentication agent failed to validate the password. Try again.",
        }
    }

    /// The outcome of a refused sign-in as the tenant's sign-in log records it.
    pub fn audit(self) -> &'static str {
        match self {
            Outcome::Valid => "success",
            Outcome::BadPassword => "bad password",
            Outcome::Disabled => "disabled on-premises",
            Outcome::LockedOut => "locked out on-premises",
            Outcome::PasswordExpired => "on-premises password expired",
            Outcome::MustChangePassword => "password must change",
            Outcome::AccountExpired => "on-premises account expired",
            Outcome::LogonHours => "outside logon hours",
            Outcome::Workstation => "workstation restriction",
            Outcome::DcUnreachable | Outcome::DecryptFailed | Outcome::InvalidRequest | Outcome::AgentError => {
                "refused by the sign-in method"
            }
        }
    }

    /// Reads an AD simple-bind result: the LDAP result code and its diagnostic message
    /// (`80090308: LdapErr: …, data 52e, v1db1`). Codes that say the server cannot serve (busy,
    /// unavailable, down) give [`Outcome::DcUnreachable`], so the agent tries another DC.
    pub fn from_bind(result_code: u32, diagnostic: &str) -> Outcome {
        match result_code {
            0 => Outcome::Valid,
            49 => match bind_data(diagnostic) {
                Some(0x530) => Outcome::LogonHours,
                Some(0x531) => Outcome::Workstation,
                Some(0x532) => Outcome::PasswordExpired,
                Some(0x533) => Outcome::Disabled,
                Some(0x701) => Outcome::AccountExpired,
                Some(0x773) => Outcome::MustChangePassword,
                Some(0x775) => Outcome::LockedOut,
                _ => Outcome::BadPassword,
            },
            51 | 52 | 81 | 91 => Outcome::DcUnreachable,
            _ => Outcome::AgentError,
        }
    }
}

/// The `data <hex>` of an AD bind diagnostic.
fn bind_data(diagnostic: &str) -> Option<u32> {
    let at = diagnostic.find("data ")?;
    let hex: String = diagnostic[at + 5..].chars().take_while(char::is_ascii_hexdigit).collect();
    u32::from_str_radix(&hex, 16).ok()
}

/// Why a sealed password cannot be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Shorter than an ephemeral key and a tag, or not base64.
    #[error("the sealed password is malformed")]
    Malformed,
    /// The key agreement gave a non-contributory (all-zero) secret: a low-order public key.
    #[error("the public key is not usable (low order)")]
    WeakKey,
    /// Authentication failed: another key, another request, or altered bytes.
    #[error("the sealed password does not open with this key and request (tampered with, or for another agent)")]
    Rejected,
}

const SALT: &[u8] = b"isthmus pass-through v1";
const EPHEMERAL_LEN: usize = 32;

/// An agent's X25519 secret key (zeroized on drop).
pub struct AgentKey(x25519_dalek::StaticSecret);

impl AgentKey {
    /// The key from its 32 secret bytes (from a random source, or the agent's key file).
    pub fn from_bytes(bytes: [u8; 32]) -> AgentKey {
        AgentKey(x25519_dalek::StaticSecret::from(bytes))
    }

    /// The secret bytes, for the agent's key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public key the tenant seals to.
    pub fn public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.0).to_bytes()
    }

    /// Opens a password sealed to this key for `context` ([`Work::context`]).
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < EPHEMERAL_LEN + ring::aead::AES_256_GCM.tag_len() {
            return Err(SealError::Malformed);
        }
        let (ephemeral, ciphertext) = sealed.split_at(EPHEMERAL_LEN);
        let mut ephemeral_bytes = [0u8; 32];
        ephemeral_bytes.copy_from_slice(ephemeral);
        let shared = self.0.diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral_bytes));
        if !shared.was_contributory() {
            return Err(SealError::WeakKey);
        }
        let key = aead_key(shared.as_bytes(), &ephemeral_bytes, &self.public());
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let nonce = ring::aead::Nonce::assume_unique_for_key([0u8; 12]);
        let plain_len =
            key.open_in_place(nonce, ring::aead::Aad::from(context), buffer.as_mut_slice()).map_err(|_| SealError::Rejected)?.len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }
}

/// Seals `plaintext` to `recipient` (an agent's public key) for `context`, with the ephemeral
/// secret `ephemeral` (32 fresh random bytes per call). Output: the ephemeral public key, then
/// the AES-256-GCM ciphertext and tag. The key is used once, so the nonce is fixed.
pub fn seal(recipient: &[u8; 32], ephemeral: [u8; 32], context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let secret = x25519_dalek::StaticSecret::from(ephemeral);
    let ephemeral_public = x25519_dalek::PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(SealError::WeakKey);
    }
    let key = aead_key(shared.as_bytes(), &ephemeral_public, recipient);
    let mut buffer = Zeroizing::new(plaintext.to_vec());
    let nonce = ring::aead::Nonce::assume_unique_for_key([0u8; 12]);
    let tag =
        key.seal_in_place_separate_tag(nonce, ring::aead::Aad::from(context), buffer.as_mut_slice()).map_err(|_| SealError::Malformed)?;
    let mut sealed = Vec::with_capacity(EPHEMERAL_LEN + buffer.len() + tag.as_ref().len());
    sealed.extend_from_slice(&ephemeral_public);
    sealed.extend_from_slice(&buffer);
    sealed.extend_from_slice(tag.as_ref());
    Ok(sealed)
}

fn aead_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> ring::aead::LessSafeKey {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, SALT).extract(shared);
    let info = [&ephemeral[..], &recipient[..]];
    // Expanding 32 bytes (one block) cannot exceed HKDF's limit of 255 blocks.
    let okm = match prk.expand(&info, &ring::aead::AES_256_GCM) {
        Ok(okm) => okm,
        Err(_) => unreachable!("HKDF-SHA256 expands 32 bytes"),
    };
    ring::aead::LessSafeKey::new(ring::aead::UnboundKey::from(okm))
}

/// An agent asks to be registered (with an administrator's bearer token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registration {
    /// A PKCS#10 request (PEM) for the agent's TLS client key, signed by that key.
    pub csr: String,
    /// The agent's X25519 public key, base64 (32 bytes).
    pub encryption_key: String,
    /// The agent's computer, for the administrator's list.
    pub machine_name: String,
    /// The agent's version.
    pub version: String,
}

/// The tenant's answer to a registration or renewal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    /// The agent's id.
    pub agent_id: String,
    /// The agent's certificate (PEM), issued by the tenant's agent CA.
    pub certificate: String,
    /// The agent CA's certificate (PEM).
    pub ca_certificate: String,
    /// When the certificate expires (Unix seconds).
    pub not_after: i64,
}

/// An agent renews its certificate (over its current one): a new key, a new request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Renewal {
    /// A PKCS#10 request (PEM) for the new key.
    pub csr: String,
    /// The new X25519 public key, base64.
    pub encryption_key: String,
}

/// A sign-in for an agent to check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Work {
    /// The request's id (answers name it).
    pub request_id: String,
    /// The on-premises userPrincipalName to bind as.
    pub user_principal_name: String,
    /// The password sealed to this agent's key for [`Work::context`], base64.
    pub sealed_password: String,
    /// After this (Unix seconds) the tenant no longer waits: the agent drops the work.
    pub expires_at: i64,
}

impl Work {
    /// What the sealed password is bound to: the request, the agent, the user and the expiry.
    pub fn context(&self, agent_id: &str) -> Vec<u8> {
        context(&self.request_id, agent_id, &self.user_principal_name, self.expires_at)
    }

    /// The sealed bytes.
    pub fn sealed(&self) -> Result<Vec<u8>, SealError> {
        B64.decode(&self.sealed_password).map_err(|_| SealError::Malformed)
    }
}

/// The associated data of a sealed password.
pub fn context(request_id: &str, agent_id: &str, user_principal_name: &str, expires_at: i64) -> Vec<u8> {
    format!("isthmus-pta\n{request_id}\n{agent_id}\n{user_principal_name}\n{expires_at}").into_bytes()
}

/// An agent's answer to one [`Work`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Answer {
    /// The request answered.
    pub request_id: String,
    /// What the check said.
    pub outcome: Outcome,
    /// For the tenant's log (never a password): which DC, which error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Base64 of a public key, as messages carry it.
pub fn key_to_text(key: &[u8; 32]) -> String {
    B64.encode(key)
}

/// A public key from its base64 text.
pub fn key_from_text(text: &str) -> Option<[u8; 32]> {
    B64.decode(text.trim()).ok()?.try_into().ok()
}

/// Base64 of sealed bytes.
pub fn sealed_to_text(sealed: &[u8]) -> String {
    B64.encode(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> AgentKey {
        AgentKey::from_bytes([byte; 32])
    }

    #[test]
    fn outcome_names_are_the_wire_names() {
        for outcome in Outcome::ALL {
            assert_eq!(serde_json::to_value(outcome).unwrap_or_default(), serde_json::json!(outcome.name()), "{outcome:?}");
        }
    }

    #[test]
    fn a_sealed_password_opens_only_with_its_key_and_context() {
        let (agent, other) = (key(7), key(9));
        let ctx = context("r1", "a1", "ann@corp.example", 100);
        let sealed = seal(&agent.public(), [3; 32], &ctx, b"Pa55word!").unwrap_or_default();
        assert_eq!(sealed.len(), 32 + 9 + 16);
        assert_eq!(agent.open(&ctx, &sealed).map(|plain| plain.to_vec()), Ok(b"Pa55word!".to_vec()));
        assert_eq!(other.open(&ctx, &sealed).map(|plain| plain.to_vec()), Err(SealError::Rejected));
        for moved in [
            context("r2", "a1", "ann@corp.example", 100),
            context("r1", "a2", "ann@corp.example", 100),
            context("r1", "a1", "bob@corp.example", 100),
            context("r1", "a1", "ann@corp.example", 101),
        ] {
            assert_eq!(agent.open(&moved, &sealed).map(|plain| plain.to_vec()), Err(SealError::Rejected));
        }
        for at in [0, 31, 32, 40, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[at] ^= 1;
            assert!(agent.open(&ctx, &tampered).is_err(), "byte {at} flipped");
        }
        assert_eq!(agent.open(&ctx, &sealed[..40]).map(|plain| plain.to_vec()), Err(SealError::Malformed));
    }

    #[test]
    fn low_order_keys_are_refused() {
        assert_eq!(seal(&[0; 32], [3; 32], b"", b"x"), Err(SealError::WeakKey));
        let mut sealed = vec![0u8; 32];
        sealed.extend_from_slice(&[0u8; 20]);
        assert_eq!(key(7).open(b"", &sealed).map(|plain| plain.to_vec()), Err(SealError::WeakKey));
    }

    #[test]
    fn ephemeral_keys_make_each_seal_different() {
        let agent = key(7);
        let a = seal(&agent.public(), [1; 32], b"c", b"same").unwrap_or_default();
        let b = seal(&agent.public(), [2; 32], b"c", b"same").unwrap_or_default();
        assert_ne!(a, b);
    }

    #[test]
    fn ad_bind_results_map_to_outcomes() {
        let diag = |data: &str| format!("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data {data}, v1db1");
        let cases = [
            ("52e", Outcome::BadPassword),
            ("525", Outcome::BadPassword),
            ("530", Outcome::LogonHours),
            ("531", Outcome::Workstation),
            ("532", Outcome::PasswordExpired),
            ("533", Outcome::Disabled),
            ("701", Outcome::AccountExpired),
            ("773", Outcome::MustChangePassword),
            ("775", Outcome::LockedOut),
        ];
        for (data, outcome) in cases {
            assert_eq!(Outcome::from_bind(49, &diag(data)), outcome, "{data}");
        }
        assert_eq!(Outcome::from_bind(0, ""), Outcome::Valid);
        assert_eq!(Outcome::from_bind(49, "no data here"), Outcome::BadPassword);
        assert_eq!(Outcome::from_bind(52, ""), Outcome::DcUnreachable);
        assert_eq!(Outcome::from_bind(81, ""), Outcome::DcUnreachable);
        assert_eq!(Outcome::from_bind(2, "protocol error"), Outcome::AgentError);
    }

    #[test]
    fn each_account_state_has_its_own_code() {
        let mut codes: Vec<u32> = Outcome::ALL.iter().map(|outcome| outcome.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Outcome::ALL.len());
        assert!(Outcome::ALL.iter().filter(|outcome| outcome.counts_as_failure()).eq([&Outcome::BadPassword]));
        assert_eq!(Outcome::DcUnreachable.oauth_error(), "temporarily_unavailable");
        assert_eq!(Outcome::LockedOut.oauth_error(), "invalid_grant");
    }

    #[test]
    fn messages_refuse_unknown_fields_and_outcomes() {
        let good = r#"{"requestId":"r","outcome":"lockedOut"}"#;
        let answer: Answer = serde_json::from_str(good).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(answer.outcome, Outcome::LockedOut);
        assert!(serde_json::from_str::<Answer>(r#"{"requestId":"r","outcome":"sortOf"}"#).is_err());
        assert!(serde_json::from_str::<Answer>(r#"{"requestId":"r","outcome":"valid","extra":1}"#).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_open_to_an_error_not_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            proptest::prop_assert!(key(5).open(b"ctx", &bytes).is_err());
        }

        #[test]
        fn any_diagnostic_maps_without_panicking(code in 0u32..100, text in ".{0,80}") {
            let _ = Outcome::from_bind(code, &text);
        }
    }
}
