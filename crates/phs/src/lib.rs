//! Password hash synchronization, the parts that are arithmetic (Entra Connect's algorithm as the
//! fact sheet gives it):
//!
//! 1. the **NT hash** of a password: MD4 of its UTF-16LE bytes (what AD keeps in `unicodePwd`
//!    and Samba in `sambaNTPassword`);
//! 2. the **transform** that is all that leaves the on-premises side: the NT hash as upper-case
//!    hex, that text as UTF-16LE (64 bytes), PBKDF2-HMAC-SHA256 with a random 10-byte salt and
//!    1,000 iterations, 32 bytes out ([`SyncedCredential`]);
//! 3. its **wire form** `v1;PPH1_MD4,<salt hex>,<iterations>,<hash hex>;`;
//! 4. the **leaked-hash list**: the public Pwned Passwords NTLM file, sorted, searched on disk,
//!    and its k-anonymity ranges ([`leaked`]).
//!
//! Secrets (NT hashes, passwords) live in zeroizing buffers and never print. No network, no
//! store: the DRSR client and the tenant use this.

pub mod leaked;

use zeroize::Zeroizing;

/// Entra's PBKDF2 iteration count for synced hashes.
pub const ITERATIONS: u32 = 1_000;
/// Length of the per-user salt.
pub const SALT_LEN: usize = 10;

/// Why a wire form cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not `v1;PPH1_MD4,<salt>,<iterations>,<hash>;`.
    #[error("a synced credential must look like v1;PPH1_MD4,<salt hex>,<iterations>,<hash hex>; — {0}")]
    Shape(&'static str),
}

/// A user's NT hash (MD4 of the UTF-16LE password). Zeroized on drop; never printed.
#[derive(Clone)]
pub struct NtHash(Zeroizing<[u8; 16]>);

impl std::fmt::Debug for NtHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NtHash(…)")
    }
}

impl NtHash {
    /// The NT hash of `password`.
    pub fn of_password(password: &str) -> NtHash {
        use md4::Digest as _;
        let utf16: Zeroizing<Vec<u8>> = Zeroizing::new(password.encode_utf16().flat_map(u16::to_le_bytes).collect());
        let digest = md4::Md4::digest(utf16.as_slice());
        let mut bytes = Zeroizing::new([0u8; 16]);
        bytes.copy_from_slice(&digest);
        NtHash(bytes)
    }

    /// A hash read from a directory.
    pub fn from_bytes(bytes: [u8; 16]) -> NtHash {
        NtHash(Zeroizing::new(bytes))
    }

    /// A hash from 32 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<NtHash> {
        let bytes = decode_hex(hex)?;
        let bytes: [u8; 16] = bytes.as_slice().try_into().ok()?;
        Some(NtHash::from_bytes(bytes))
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Upper-case hex, as .NET's `BitConverter` writes it (and as the leaked list keys it).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_hex(self.0.as_slice()))
    }
}

/// What password hash sync sends to the tenant for one user: PBKDF2-HMAC-SHA256 over the
/// UTF-16LE upper-case hex of the NT hash. The NT hash itself cannot be recovered from it, nor
/// used to sign in anywhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncedCredential {
    /// The 32-byte PBKDF2 output.
    pub hash: [u8; 32],
    /// The per-user salt.
    pub salt: [u8; SALT_LEN],
    /// PBKDF2 iterations.
    pub iterations: u32,
}

impl std::fmt::Debug for SyncedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SyncedCredential({} iterations)", self.iterations)
    }
}

fn pbkdf2(nt: &NtHash, salt: &[u8], iterations: u32) -> [u8; 32] {
    let text: Zeroizing<Vec<u8>> = Zeroizing::new(nt.to_hex().encode_utf16().flat_map(u16::to_le_bytes).collect());
    let mut out = [0u8; 32];
    let iterations = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, &text, &mut out);
    out
}

impl SyncedCredential {
    /// The transform with a given salt (known-answer tests, verification).
    pub fn derive(nt: &NtHash, salt: [u8; SALT_LEN], iterations: u32) -> SyncedCredential {
        SyncedCredential { hash: pbkdf2(nt, &salt, iterations), salt, iterations }
    }

    /// The transform with a fresh random salt and Entra's 1,000 iterations.
    pub fn new(nt: &NtHash) -> SyncedCredential {
        use ring::rand::SecureRandom as _;
        let mut salt = [0u8; SALT_LEN];
        // The system's random source does not fail on Linux once booted; an all-zero salt
        // (never expected) would still give a valid credential.
        let _ = ring::rand::SystemRandom::new().fill(&mut salt);
        SyncedCredential::derive(nt, salt, ITERATIONS)
    }

    /// Whether `password` is the one this credential was made from (constant-time compare).
    pub fn verify_password(&self, password: &str) -> bool {
        self.verify_nt(&NtHash::of_password(password))
    }

    /// Whether `nt` is the NT hash this credential was made from.
    pub fn verify_nt(&self, nt: &NtHash) -> bool {
        let text: Zeroizing<Vec<u8>> = Zeroizing::new(nt.to_hex().encode_utf16().flat_map(u16::to_le_bytes).collect());
        let Some(iterations) = std::num::NonZeroU32::new(self.iterations) else { return false };
        ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA256, iterations, &self.salt, &text, &self.hash).is_ok()
    }

    /// `v1;PPH1_MD4,<salt hex>,<iterations>,<hash hex>;` (lower-case hex).
    pub fn to_wire(&self) -> String {
        format!("v1;PPH1_MD4,{},{},{};", encode_hex(&self.salt).to_lowercase(), self.iterations, encode_hex(&self.hash).to_lowercase())
    }

    /// Reads the wire form; anything else is an error saying what was wrong.
    pub fn from_wire(text: &str) -> Result<SyncedCredential, WireError> {
        let body = text.strip_prefix("v1;PPH1_MD4,").ok_or(WireError::Shape("it does not start with v1;PPH1_MD4,"))?;
        let body = body.strip_suffix(';').ok_or(WireError::Shape("it does not end with ;"))?;
        let mut parts = body.split(',');
        let (Some(salt), Some(iterations), Some(hash), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(WireError::Shape("it needs exactly a salt, an iteration count and a hash"));
        };
        let salt: [u8; SALT_LEN] =
            decode_hex(salt).and_then(|bytes| bytes.try_into().ok()).ok_or(WireError::Shape("the salt is not 10 bytes of hex"))?;
        let iterations: u32 = iterations.parse().map_err(|_| WireError::Shape("the iteration count is not a number"))?;
        // What Entra's sync sends, and nothing else: each sign-in check costs the iterations,
        // so a larger count from the wire would be a denial of service on every sign-in.
        if iterations != ITERATIONS {
            return Err(WireError::Shape("the iteration count must be 1000 (PBKDF2-HMAC-SHA256, as Entra's sync sends)"));
        }
        let hash: [u8; 32] =
            decode_hex(hash).and_then(|bytes| bytes.try_into().ok()).ok_or(WireError::Shape("the hash is not 32 bytes of hex"))?;
        Ok(SyncedCredential { hash, salt, iterations })
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    out
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_hashes_are_md4_of_utf16le() {
        // Well-known values: "password" and the empty password.
        assert_eq!(&*NtHash::of_password("password").to_hex(), "8846F7EAEE8FB117AD06BDD830B7586C");
        assert_eq!(&*NtHash::of_password("").to_hex(), "31D6CFE0D16AE931B73C59D7E0C089C0");
        assert_eq!(format!("{:?}", NtHash::of_password("password")), "NtHash(…)", "never printed");
    }

    #[test]
    fn the_transform_matches_an_independent_pbkdf2() {
        // Expected values from Python's hashlib.pbkdf2_hmac("sha256", hex.encode("utf-16-le"), salt, 1000, 32).
        let salt: [u8; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let credential = SyncedCredential::derive(&NtHash::of_password("password"), salt, ITERATIONS);
        assert_eq!(encode_hex(&credential.hash).to_lowercase(), "86a8194e60929aca01ac903df82e30afaea0279741d442d98e01f9600912f005");
        let empty = SyncedCredential::derive(&NtHash::of_password(""), [0; 10], ITERATIONS);
        assert_eq!(encode_hex(&empty.hash).to_lowercase(), "c1c992eb3b2e7d76c3c4ce8c4da0d7eb5177ddb968f4617748802a4ba4fdc160");
    }

    #[test]
    fn a_credential_verifies_its_password_only() {
        let credential = SyncedCredential::new(&NtHash::of_password("Str0ng!Pass"));
        assert_eq!(credential.iterations, ITERATIONS);
        assert!(credential.verify_password("Str0ng!Pass"));
        assert!(!credential.verify_password("str0ng!pass"));
        assert!(!credential.verify_password(""));
        let other = SyncedCredential::new(&NtHash::of_password("Str0ng!Pass"));
        assert_ne!(credential.salt, other.salt, "a fresh salt each time");
    }

    #[test]
    fn the_wire_form_round_trips_and_bad_ones_say_why() {
        let credential = SyncedCredential::derive(&NtHash::of_password("password"), [0xAB; 10], 1000);
        let wire = credential.to_wire();
        assert!(
            wire.starts_with("v1;PPH1_MD4,abababababababababab,1000,") && wire.ends_with(';') && wire.len() == 12 + 20 + 6 + 64 + 1,
            "{wire}"
        );
        assert_eq!(SyncedCredential::from_wire(&wire), Ok(credential));
        for (bad, why) in [
            ("", "start"),
            ("v1;PPH1_MD4,ab,1000,cd;", "salt"),
            ("v1;PPH1_MD4,abababababababababab,x,cd;", "iteration"),
            ("v1;PPH1_MD4,abababababababababab,0,cd;", "must be 1000"),
            ("v1;PPH1_MD4,abababababababababab,1000000,cd;", "must be 1000"),
            ("v1;PPH1_MD4,abababababababababab,999,cd;", "must be 1000"),
            ("v1;PPH1_MD4,abababababababababab,1000,cd;", "hash"),
            ("v1;PPH1_MD4,abababababababababab,1000", "end"),
            ("v1;PPH1_MD4,a,b,c,d;", "exactly"),
        ] {
            let err = SyncedCredential::from_wire(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_credential_or_an_error(text in "\\PC{0,120}") {
            let _ = SyncedCredential::from_wire(&text);
        }

        #[test]
        fn hex_round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            proptest::prop_assert_eq!(decode_hex(&encode_hex(&bytes)), Some(bytes));
        }
    }
}
