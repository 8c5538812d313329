//! Randomness, identifiers, secrets and JWTs, all on `ring`.
//!
//! Tokens are signed with ES256 (ECDSA P-256, SHA-256): `ring` makes and keeps the key, the
//! JWKS publishes it. (Entra signs with RS256; Microsoft's client libraries do not check the
//! algorithm, and relying parties read it from the token header and the JWKS.)

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("the token is malformed")]
    Malformed,
    /// The signature does not verify with the tenant's key.
    #[error("the token signature is invalid")]
    BadSignature,
    /// `exp` is in the past (or `nbf` in the future).
    #[error("the token has expired")]
    Expired,
    /// Issued for another tenant or audience.
    #[error("the token is not for this tenant")]
    WrongAudience,
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    // The system generator does not fail on Linux; a failure leaves zeros only if the OS is broken.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        tracing::error!("the system random generator failed");
    }
    bytes
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A certificate's (DER) SHA-256 and SHA-1 thumbprints, lower-case hex: how an app's
/// certificates are named (`x5t#S256`, `x5t`).
pub fn thumbprints(der: &[u8]) -> (String, String) {
    (
        hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()),
        hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref()),
    )
}

/// A random (version 4) GUID, lower-case with dashes.
pub fn new_guid() -> String {
    let mut bytes = random_bytes(16);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex(&bytes);
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// A new client secret: 32 random bytes as base64url (shown once, stored hashed).
pub fn new_secret() -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(B64URL.encode(random_bytes(32)))
}

/// SHA-256 of a high-entropy secret (client secrets are random; a slow KDF adds nothing there).
pub fn secret_hash(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref().to_vec()
}

/// Compares without leaking where two values differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// PBKDF2-HMAC-SHA256 of a user's password with a random 16-byte salt.
pub fn password_hash(password: &str, iterations: u32) -> (Vec<u8>, Vec<u8>) {
    let salt = random_bytes(16);
    (salt.clone(), password_derive(password, &salt, iterations))
}

fn password_derive(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let rounds = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, password.as_bytes(), &mut out);
    out
}

/// Whether `password` matches a stored PBKDF2 hash.
pub fn password_matches(password: &str, salt: &[u8], iterations: u32, hash: &[u8]) -> bool {
    let rounds = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, password.as_bytes(), hash).is_ok()
}

/// The tenant's token-signing key.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    /// Key id (`kid`): the first bytes of the public key's SHA-256, base64url.
    pub kid: String,
}

impl SigningKey {
    /// A new PKCS#8 document for a P-256 key.
    pub fn generate_pkcs8() -> Result<Vec<u8>, String> {
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map(|document| document.as_ref().to_vec())
            .map_err(|_| "cannot generate a signing key".to_string())
    }

    /// Loads a PKCS#8 P-256 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &SystemRandom::new())
            .map_err(|err| format!("the signing key is not a P-256 PKCS#8 key: {err}"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref());
        let kid = B64URL.encode(&digest.as_ref()[..12]);
        Ok(SigningKey { pair, kid })
    }

    /// The JWKS document (`{"keys":[…]}`).
    pub fn jwks(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        json!({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid, "x": B64URL.encode(x), "y": B64URL.encode(y)}]})
    }

    /// A signed JWT of `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let signing_input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let signature = self.pair.sign(&SystemRandom::new(), signing_input.as_bytes()).map_err(|_| "signing failed".to_string())?;
        Ok(format!("{signing_input}.{}", B64URL.encode(signature.as_ref())))
    }

    /// The claims of a token this key signed, checked for signature and time (`now`, Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let claims = self.signed_claims(token)?;
        let exp = claims.get("exp").and_then(Value::as_i64).ok_or(TokenError::Malformed)?;
        let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
        // Five minutes of clock skew, as Entra allows.
        if now > exp + 300 || now + 300 < nbf {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// The claims of a token this key signed, checked for the signature only (an expired ID
    /// token still names who it was for, as RP-initiated logout's `id_token_hint` needs).
    pub fn signed_claims(&self, token: &str) -> Result<Value, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let signature = B64URL.decode(signature).map_err(|_| TokenError::Malformed)?;
        let key = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref());
        key.verify(format!("{header}.{body}").as_bytes(), &signature).map_err(|_| TokenError::BadSignature)?;
        B64URL.decode(body).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).ok_or(TokenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_tampering_is_caught() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let token = key.sign(&json!({"sub": "a", "exp": 2_000, "nbf": 1_000})).unwrap();
        assert_eq!(key.verify(&token, 1_500).unwrap()["sub"], "a");
        assert_eq!(key.verify(&token, 2_400), Err(TokenError::Expired));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = B64URL.encode(json!({"sub": "admin", "exp": 2_000}).to_string());
        parts[1] = &forged;
        assert_eq!(key.verify(&parts.join("."), 1_500), Err(TokenError::BadSignature));
        assert_eq!(key.verify("a.b", 1_500), Err(TokenError::Malformed));
        let other = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        assert_eq!(other.verify(&token, 1_500), Err(TokenError::BadSignature));
        assert_eq!(key.jwks()["keys"][0]["kid"], key.kid.as_str());
    }

    #[test]
    fn guids_secrets_and_passwords() {
        let guid = new_guid();
        assert_eq!((guid.len(), &guid[14..15]), (36, "4"));
        assert_ne!(new_guid(), guid);
        let secret = new_secret();
        assert!(same(&secret_hash(&secret), &secret_hash(&secret)) && !same(&secret_hash(&secret), &secret_hash("x")));
        let (salt, hash) = password_hash("Pa55word!", 1_000);
        assert!(password_matches("Pa55word!", &salt, 1_000, &hash));
        assert!(!password_matches("pa55word!", &salt, 1_000, &hash));
    }
}
