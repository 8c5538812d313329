//! Decryption of secret attribute values a domain controller replicates ([MS-DRSR] 4.1.10.6.12
//! and 4.1.10.6.13): a 16-byte salt, then RC4 under MD5(session key + salt) of a CRC-32 and the
//! value; for `unicodePwd` the value is itself the NT hash encrypted with two DES keys made
//! from the account's RID ([MS-SAMR] 2.2.11.1.3).

use des::Des;
use des::cipher::{Array, BlockCipherDecrypt as _, KeyInit as _};
use md5::{Digest as _, Md5};
use rc4::{Rc4, StreamCipher as _};
use zeroize::{Zeroize, Zeroizing};

/// Why a secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Shorter than salt + checksum (+ hash).
    #[error("an encrypted secret of {0} bytes is too short")]
    TooShort(usize),
    /// The checksum did not match: wrong session key or damaged data.
    #[error("an encrypted secret failed its checksum (wrong session key or damaged reply)")]
    Checksum,
    /// Not 16 bytes once decrypted.
    #[error("a decrypted NT hash of {0} bytes (16 expected)")]
    HashLength(usize),
}

/// Removes the session-key encryption of one replicated secret value.
pub fn decrypt_value(session_key: &[u8; 16], value: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    if value.len() < 20 {
        return Err(SecretError::TooShort(value.len()));
    }
    let (salt, encrypted) = value.split_at(16);
    let mut key: [u8; 16] = Md5::new().chain_update(session_key).chain_update(salt).finalize().into();
    let mut plain = Zeroizing::new(encrypted.to_vec());
    // RC4 takes keys of 1..=256 bytes; this one has 16.
    let mut cipher = Rc4::new_from_slice(&key).map_err(|_| SecretError::Checksum)?;
    key.zeroize();
    cipher.apply_keystream(&mut plain);
    let checksum = u32::from_le_bytes([plain[0], plain[1], plain[2], plain[3]]);
    if crc32fast::hash(&plain[4..]) != checksum {
        return Err(SecretError::Checksum);
    }
    Ok(Zeroizing::new(plain[4..].to_vec()))
}

/// The 8-byte DES key spread from 7 bytes, parity bits left clear ([MS-SAMR] 2.2.11.1.2).
fn des_key(seven: [u8; 7]) -> [u8; 8] {
    let k = seven;
    [
        k[0] >> 1,
        ((k[0] & 0x01) << 6) | (k[1] >> 2),
        ((k[1] & 0x03) << 5) | (k[2] >> 3),
        ((k[2] & 0x07) << 4) | (k[3] >> 4),
        ((k[3] & 0x0f) << 3) | (k[4] >> 5),
        ((k[4] & 0x1f) << 2) | (k[5] >> 6),
        ((k[5] & 0x3f) << 1) | (k[6] >> 7),
        k[6] & 0x7f,
    ]
    .map(|byte| byte << 1)
}

/// The NT hash inside a decrypted `unicodePwd` value, unwrapped with the RID's DES keys.
pub fn nt_hash_from_rid_encrypted(rid: u32, encrypted: &[u8]) -> Result<Zeroizing<[u8; 16]>, SecretError> {
    if encrypted.len() != 16 {
        return Err(SecretError::HashLength(encrypted.len()));
    }
    let r = rid.to_le_bytes();
    let keys = [des_key([r[0], r[1], r[2], r[3], r[0], r[1], r[2]]), des_key([r[3], r[0], r[1], r[2], r[3], r[0], r[1]])];
    let mut out = Zeroizing::new([0u8; 16]);
    for (half, key) in keys.iter().enumerate() {
        let cipher = Des::new(&Array::from(*key));
        let mut block = Array::from([0u8; 8]);
        block.copy_from_slice(&encrypted[half * 8..half * 8 + 8]);
        cipher.decrypt_block(&mut block);
        out[half * 8..half * 8 + 8].copy_from_slice(&block);
        block.zeroize();
    }
    Ok(out)
}

/// The NT hash in a replicated `unicodePwd` value of the account with relative id `rid`.
pub fn nt_hash(session_key: &[u8; 16], rid: u32, value: &[u8]) -> Result<Zeroizing<[u8; 16]>, SecretError> {
    let inner = decrypt_value(session_key, value)?;
    nt_hash_from_rid_encrypted(rid, &inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use des::cipher::BlockCipherEncrypt as _;

    /// Encrypts as a DC does, to check decryption undoes it (the Samba test checks it against
    /// a real DC).
    fn encrypt_like_a_dc(session_key: &[u8; 16], salt: [u8; 16], rid: u32, hash: [u8; 16]) -> Vec<u8> {
        let r = rid.to_le_bytes();
        let keys = [des_key([r[0], r[1], r[2], r[3], r[0], r[1], r[2]]), des_key([r[3], r[0], r[1], r[2], r[3], r[0], r[1]])];
        let mut inner = Vec::new();
        for (half, key) in keys.iter().enumerate() {
            let mut block = Array::from([0u8; 8]);
            block.copy_from_slice(&hash[half * 8..half * 8 + 8]);
            Des::new(&Array::from(*key)).encrypt_block(&mut block);
            inner.extend_from_slice(&block);
        }
        let mut plain = crc32fast::hash(&inner).to_le_bytes().to_vec();
        plain.extend_from_slice(&inner);
        let key: [u8; 16] = Md5::new().chain_update(session_key).chain_update(salt).finalize().into();
        Rc4::new_from_slice(&key).unwrap_or_else(|_| unreachable!()).apply_keystream(&mut plain);
        [&salt[..], &plain].concat()
    }

    #[test]
    fn a_dc_encrypted_hash_comes_back() {
        let hash = [0x4a, 0x2c, 0xea, 0xbd, 0x3f, 0x7d, 0x93, 0x8b, 0xc0, 0xe1, 0xa7, 0x28, 0x60, 0x60, 0x9b, 0x5e];
        let value = encrypt_like_a_dc(&[7; 16], [9; 16], 1105, hash);
        assert_eq!(*nt_hash(&[7; 16], 1105, &value).unwrap_or_else(|e| panic!("{e}")), hash);
        assert_eq!(nt_hash(&[8; 16], 1105, &value).err(), Some(SecretError::Checksum), "another session key");
        assert_ne!(*nt_hash(&[7; 16], 1106, &value).unwrap_or_else(|e| panic!("{e}")), hash, "another RID");
        assert_eq!(nt_hash(&[7; 16], 1105, &value[..19]).err(), Some(SecretError::TooShort(19)));
    }

    #[test]
    fn des_keys_spread_seven_bytes_over_eight() {
        assert_eq!(des_key([0xff; 7]), [0xfe; 8]);
        assert_eq!(des_key([0; 7]), [0; 8]);
        assert_eq!(des_key([0x80, 0, 0, 0, 0, 0, 0]), [0x80, 0, 0, 0, 0, 0, 0, 0]);
    }
}
