//! NTLM v2 authentication with extended session security, key exchange and sealing
//! ([MS-NLMP]), as a DCE/RPC client needs it for packet privacy: the NEGOTIATE message, the
//! AUTHENTICATE message answering a server's CHALLENGE, then a [`Session`] that seals and signs
//! outgoing PDUs and unseals and checks incoming ones. No I/O here.

use hmac::{Hmac, Mac as _};
use md5::{Digest as _, Md5};
use rc4::{Rc4, StreamCipher as _};
use zeroize::{Zeroize, Zeroizing};

use crate::RpcError;

type HmacMd5 = Hmac<Md5>;

/// Negotiate flags ([MS-NLMP] 2.2.2.5).
pub mod flags {
    /// Unicode strings.
    pub const UNICODE: u32 = 0x0000_0001;
    /// Ask for the server's target name.
    pub const REQUEST_TARGET: u32 = 0x0000_0004;
    /// Message integrity.
    pub const SIGN: u32 = 0x0000_0010;
    /// Message confidentiality.
    pub const SEAL: u32 = 0x0000_0020;
    /// NTLM (v1 or v2) session security.
    pub const NTLM: u32 = 0x0000_0200;
    /// A dummy signature is always present.
    pub const ALWAYS_SIGN: u32 = 0x0000_8000;
    /// Extended session security (NTLM2 keys).
    pub const EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
    /// The CHALLENGE carries target info.
    pub const TARGET_INFO: u32 = 0x0080_0000;
    /// The version field is present.
    pub const VERSION: u32 = 0x0200_0000;
    /// 128-bit session keys.
    pub const KEY_128: u32 = 0x2000_0000;
    /// The client sends an encrypted random session key.
    pub const KEY_EXCH: u32 = 0x4000_0000;
    /// 56-bit encryption.
    pub const KEY_56: u32 = 0x8000_0000;
}

/// What this client asks for and requires of the server.
pub const CLIENT_FLAGS: u32 = flags::UNICODE
    | flags::REQUEST_TARGET
    | flags::SIGN
    | flags::SEAL
    | flags::NTLM
    | flags::ALWAYS_SIGN
    | flags::EXTENDED_SESSIONSECURITY
    | flags::VERSION
    | flags::KEY_128
    | flags::KEY_EXCH
    | flags::KEY_56;
/// Flags the server must grant, or packet privacy would not be what it claims.
const REQUIRED: u32 = flags::SIGN | flags::SEAL | flags::EXTENDED_SESSIONSECURITY | flags::KEY_128 | flags::KEY_EXCH;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
/// A VERSION structure (6.1, build 7601, NTLM revision 15); informational only.
const VERSION: [u8; 8] = [6, 1, 0xb1, 0x1d, 0, 0, 0, 15];

/// The account authenticating: user, domain (NetBIOS or DNS name) and NT hash of the password.
pub struct Credentials {
    /// The sAMAccountName.
    pub user: String,
    /// The domain the account belongs to.
    pub domain: String,
    /// MD4(UTF-16LE(password)).
    pub nt_hash: Zeroizing<[u8; 16]>,
}

impl Credentials {
    /// From a password (hashed here; the password itself is not kept).
    pub fn with_password(user: &str, domain: &str, password: &str) -> Credentials {
        let mut utf16 = Zeroizing::new(utf16le(password));
        let digest: [u8; 16] = md4::Md4::digest(utf16.as_slice()).into();
        utf16.zeroize();
        Credentials { user: user.to_string(), domain: domain.to_string(), nt_hash: Zeroizing::new(digest) }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("domain", &self.domain).finish_non_exhaustive()
    }
}

fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length.
    let mut mac = <HmacMd5 as hmac::KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn rc4(key: &[u8]) -> Rc4 {
    // Keys here are 16 bytes, within RC4's 1..=256.
    <Rc4 as rc4::KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("16-byte RC4 key"))
}

/// The NEGOTIATE message (type 1).
pub fn negotiate() -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // domain: none
    out.extend_from_slice(&[0; 8]); // workstation: none
    out.extend_from_slice(&VERSION);
    out
}

/// What a CHALLENGE message (type 2) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The flags the server chose.
    pub flags: u32,
    /// Its 8-byte challenge.
    pub server_challenge: [u8; 8],
    /// The AV pairs, as sent.
    pub target_info: Vec<u8>,
}

impl Challenge {
    /// The server's FILETIME from the MsvAvTimestamp pair, if sent.
    fn timestamp(&self) -> Option<[u8; 8]> {
        let mut at = 0;
        while at + 4 <= self.target_info.len() {
            let id = u16::from_le_bytes([self.target_info[at], self.target_info[at + 1]]);
            let len = usize::from(u16::from_le_bytes([self.target_info[at + 2], self.target_info[at + 3]]));
            let value = self.target_info.get(at + 4..at + 4 + len)?;
            match id {
                0 => return None,
                7 if len == 8 => return value.try_into().ok(),
                _ => at += 4 + len,
            }
        }
        None
    }
}

fn field<'a>(message: &'a [u8], at: usize, what: &str) -> Result<&'a [u8], RpcError> {
    let header = message.get(at..at + 8).ok_or_else(|| RpcError::Malformed(format!("NTLM CHALLENGE: no {what} field")))?;
    let len = usize::from(u16::from_le_bytes([header[0], header[1]]));
    let offset = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    offset
        .checked_add(len)
        .and_then(|end| message.get(offset..end))
        .ok_or_else(|| RpcError::Malformed(format!("NTLM CHALLENGE: the {what} field points outside the message")))
}

/// Reads a CHALLENGE message.
pub fn parse_challenge(message: &[u8]) -> Result<Challenge, RpcError> {
    if message.len() < 32 || &message[..8] != SIGNATURE || message[8..12] != 2u32.to_le_bytes() {
        return Err(RpcError::Malformed("not an NTLM CHALLENGE message".into()));
    }
    let flags = u32::from_le_bytes([message[20], message[21], message[22], message[23]]);
    let mut server_challenge = [0; 8];
    server_challenge.copy_from_slice(&message[24..32]);
    let target_info = if flags & flags::TARGET_INFO != 0 { field(message, 40, "target info")?.to_vec() } else { Vec::new() };
    Ok(Challenge { flags, server_challenge, target_info })
}

/// The result of answering a challenge: the AUTHENTICATE message to send and the session it opens.
pub struct Authenticated {
    /// The AUTHENTICATE message (type 3).
    pub message: Vec<u8>,
    /// Sealing, signing and the session key.
    pub session: Session,
}

/// Answers `challenge` for `credentials`, with the given client challenge, random session key
/// and time (FILETIME) — [`authenticate`] draws them; tests fix them.
pub fn authenticate_with(
    credentials: &Credentials,
    challenge: &Challenge,
    client_challenge: [u8; 8],
    random_session_key: [u8; 16],
    now: [u8; 8],
) -> Result<Authenticated, RpcError> {
    let missing = REQUIRED & !challenge.flags;
    if missing != 0 {
        return Err(RpcError::Refused(format!(
            "the server did not grant NTLM signing, sealing and 128-bit key exchange (flags 0x{:08x}, missing 0x{missing:08x})",
            challenge.flags
        )));
    }
    let user_domain = [utf16le(&credentials.user.to_uppercase()), utf16le(&credentials.domain)].concat();
    let response_key = Zeroizing::new(hmac_md5(credentials.nt_hash.as_slice(), &[&user_domain]));
    let time = challenge.timestamp().unwrap_or(now);
    let mut temp = Vec::with_capacity(28 + challenge.target_info.len() + 4);
    temp.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    temp.extend_from_slice(&time);
    temp.extend_from_slice(&client_challenge);
    temp.extend_from_slice(&[0; 4]);
    temp.extend_from_slice(&challenge.target_info);
    temp.extend_from_slice(&[0; 4]);
    let proof = hmac_md5(response_key.as_slice(), &[&challenge.server_challenge, &temp]);
    let nt_response = [&proof[..], &temp].concat();
    // With a server timestamp the LM response is zeros ([MS-NLMP] 3.1.5.1.2).
    let lm_response = if challenge.timestamp().is_some() {
        vec![0; 24]
    } else {
        [&hmac_md5(response_key.as_slice(), &[&challenge.server_challenge, &client_challenge])[..], &client_challenge].concat()
    };
    let key_exchange_key = Zeroizing::new(hmac_md5(response_key.as_slice(), &[&proof]));
    let mut encrypted_key = random_session_key;
    rc4(key_exchange_key.as_slice()).apply_keystream(&mut encrypted_key);

    let domain = utf16le(&credentials.domain);
    let user = utf16le(&credentials.user);
    let workstation = utf16le("ISTHMUS");
    let payload: [&[u8]; 6] = [&lm_response, &nt_response, &domain, &user, &workstation, &encrypted_key];
    let header_len = 64 + VERSION.len();
    let mut message = Vec::with_capacity(header_len + payload.iter().map(|part| part.len()).sum::<usize>());
    message.extend_from_slice(SIGNATURE);
    message.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = header_len;
    for part in payload {
        let len = u16::try_from(part.len()).map_err(|_| RpcError::Malformed("an NTLM field longer than 65535 bytes".into()))?;
        message.extend_from_slice(&len.to_le_bytes());
        message.extend_from_slice(&len.to_le_bytes());
        message.extend_from_slice(&(offset as u32).to_le_bytes());
        offset += part.len();
    }
    let negotiated = CLIENT_FLAGS & challenge.flags;
    message.extend_from_slice(&negotiated.to_le_bytes());
    message.extend_from_slice(&VERSION);
    for part in payload {
        message.extend_from_slice(part);
    }
    Ok(Authenticated { message, session: Session::new(random_session_key) })
}

/// Answers `challenge` with a fresh client challenge and session key from the system's random
/// source.
pub fn authenticate(credentials: &Credentials, challenge: &Challenge) -> Result<Authenticated, RpcError> {
    use ring::rand::SecureRandom as _;
    let random = ring::rand::SystemRandom::new();
    let mut client_challenge = [0u8; 8];
    let mut session_key = [0u8; 16];
    random.fill(&mut client_challenge).map_err(|_| RpcError::Io("no random numbers from the system".into()))?;
    random.fill(&mut session_key).map_err(|_| RpcError::Io("no random numbers from the system".into()))?;
    // FILETIME: 100 ns ticks since 1601.
    let since_1970 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ticks = (since_1970.as_nanos() / 100) as u64 + 116_444_736_000_000_000;
    let result = authenticate_with(credentials, challenge, client_challenge, session_key, ticks.to_le_bytes());
    session_key.zeroize();
    result
}

/// One direction's keys and state.
struct Direction {
    signing_key: Zeroizing<[u8; 16]>,
    handle: Rc4,
    sequence: u32,
}

impl Direction {
    fn new(session_key: &[u8; 16], sign_magic: &[u8], seal_magic: &[u8]) -> Direction {
        let signing_key = Zeroizing::new(md5(&[session_key, sign_magic]));
        let mut sealing_key = md5(&[session_key, seal_magic]);
        let handle = rc4(&sealing_key);
        sealing_key.zeroize();
        Direction { signing_key, handle, sequence: 0 }
    }

    /// HMAC_MD5(signing key, sequence number + `signed`), first 8 bytes.
    fn checksum(&self, signed: &[u8]) -> [u8; 8] {
        let mac = hmac_md5(self.signing_key.as_slice(), &[&self.sequence.to_le_bytes(), signed]);
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(&mac[..8]);
        checksum
    }

    /// The signature for `checksum`, sealed with the RC4 handle (after the data it covers was
    /// sealed with the same handle); moves to the next sequence number.
    fn signature(&mut self, mut checksum: [u8; 8]) -> [u8; 16] {
        self.handle.apply_keystream(&mut checksum);
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&1u32.to_le_bytes());
        out[4..12].copy_from_slice(&checksum);
        out[12..].copy_from_slice(&self.sequence.to_le_bytes());
        self.sequence = self.sequence.wrapping_add(1);
        out
    }
}

/// An established NTLM session: seals what the client sends, unseals what the server sends.
pub struct Session {
    session_key: Zeroizing<[u8; 16]>,
    client: Direction,
    server: Direction,
}

impl Session {
    fn new(session_key: [u8; 16]) -> Session {
        let client = Direction::new(
            &session_key,
            b"session key to client-to-server signing key magic constant\0",
            b"session key to client-to-server sealing key magic constant\0",
        );
        let server = Direction::new(
            &session_key,
            b"session key to server-to-client signing key magic constant\0",
            b"session key to server-to-client sealing key magic constant\0",
        );
        Session { session_key: Zeroizing::new(session_key), client, server }
    }

    /// The exported session key (what MS-DRSR encrypts secrets with).
    pub fn session_key(&self) -> &[u8; 16] {
        &self.session_key
    }

    /// Encrypts `data` in place and returns the signature over `signed`, where `signed` is the
    /// plaintext covered by the signature (for DCE/RPC, the whole PDU up to the signature, with
    /// `data` inside it still in plaintext) — computed before `data` is encrypted.
    pub fn seal(&mut self, data: &mut [u8], signed: &[u8]) -> [u8; 16] {
        let checksum = self.client.checksum(signed);
        self.client.handle.apply_keystream(data);
        self.client.signature(checksum)
    }

    /// Decrypts `data` in place, then checks `signature` over the plaintext `signed` that
    /// `signed_of` builds from the decrypted data.
    pub fn unseal(&mut self, data: &mut [u8], signature: &[u8], signed_of: impl FnOnce(&[u8]) -> Vec<u8>) -> Result<(), RpcError> {
        self.server.handle.apply_keystream(data);
        let checksum = self.server.checksum(&signed_of(data));
        let expected = self.server.signature(checksum);
        if !constant_time_eq(&expected, signature) {
            return Err(RpcError::Refused("a sealed PDU from the server failed its NTLM signature check".into()));
        }
        Ok(())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("00"), 16).unwrap_or(0)).collect()
    }

    /// [MS-NLMP] 4.2.4: User/Domain/Password, server challenge 0123456789abcdef, client
    /// challenge aa…, time 0, random session key 55…, target info Domain + Server.
    fn spec_challenge() -> Challenge {
        Challenge {
            flags: 0xe28a_8233,
            server_challenge: [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            target_info: hex("02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000"),
        }
    }

    #[test]
    fn ntlmv2_matches_the_specification_examples() {
        let credentials = Credentials::with_password("User", "Domain", "Password");
        let auth = authenticate_with(&credentials, &spec_challenge(), [0xaa; 8], [0x55; 16], [0; 8]).unwrap_or_else(|e| panic!("{e}"));
        let message = &auth.message;
        let field = |at: usize| {
            let len = usize::from(u16::from_le_bytes([message[at], message[at + 1]]));
            let offset = u32::from_le_bytes([message[at + 4], message[at + 5], message[at + 6], message[at + 7]]) as usize;
            message[offset..offset + len].to_vec()
        };
        assert_eq!(field(12), hex("86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"), "LMv2 response (4.2.4.2.1)");
        let nt = field(20);
        assert_eq!(nt[..16], hex("68cd0ab851e51c96aabc927bebef6a1c")[..], "NTProofStr (4.2.4.2.2)");
        assert_eq!(
            nt[16..],
            hex(
                "0101000000000000 0000000000000000 aaaaaaaaaaaaaaaa 00000000 02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000 00000000"
            )[..],
            "temp (4.2.4.1.3)"
        );
        assert_eq!(field(52), hex("c5dad2544fc9799094ce1ce90bc9d03e"), "encrypted random session key (4.2.4.2.3)");
        assert_eq!(field(36), utf16le("User"));

        // 4.2.4.4: sealing "Plaintext" with sequence number 0.
        let mut session = auth.session;
        let mut data = utf16le("Plaintext");
        let plaintext = data.clone();
        let signature = session.seal(&mut data, &plaintext);
        assert_eq!(data, hex("54e50165bf1936dc996020c1811b0f06fb5f"));
        assert_eq!(signature.to_vec(), hex("010000007fb38ec5c55d497600000000"));
    }

    #[test]
    fn a_server_that_will_not_seal_is_refused() {
        let credentials = Credentials::with_password("u", "d", "p");
        let mut challenge = spec_challenge();
        challenge.flags &= !flags::SEAL;
        let err = authenticate_with(&credentials, &challenge, [0; 8], [0; 16], [0; 8]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("sealing"), "{err}");
    }

    #[test]
    fn challenges_are_parsed_and_bad_ones_refused() {
        let message = hex(
            "4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef00000000000000002400240044000000060070170000000f53006500720076006500720002000c0044006f006d00610069006e0001000c0053006500720076006500720000000000",
        );
        let challenge = parse_challenge(&message).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(challenge.server_challenge, [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(challenge.target_info, spec_challenge().target_info);
        let mut pointing_out = message.clone();
        pointing_out[44] = 0xff;
        assert!(parse_challenge(&pointing_out).is_err());
        assert!(parse_challenge(&message[..20]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            let mut message = b"NTLMSSP\0\x02\0\0\0".to_vec();
            message.extend_from_slice(&bytes);
            let _ = parse_challenge(&message);
            let _ = parse_challenge(&bytes);
        }
    }
}
