//! Frontend authentication: password verifiers stored as hashes, the
//! `mysql_native_password` and `caching_sha2_password` checks, and the RSA key
//! used for caching_sha2 full authentication over plain connections.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;

use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey};
use sha1::{Digest, Sha1};
use sha2::Sha256;

pub const NATIVE_PLUGIN: &str = "mysql_native_password";
pub const SHA2_PLUGIN: &str = "caching_sha2_password";

/// Which plugin a user authenticates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Native,
    CachingSha2,
}

impl AuthMethod {
    pub fn plugin_name(self) -> &'static str {
        match self {
            AuthMethod::Native => NATIVE_PLUGIN,
            AuthMethod::CachingSha2 => SHA2_PLUGIN,
        }
    }

    pub fn from_plugin_name(name: &[u8]) -> Option<Self> {
        match name {
            b"mysql_native_password" => Some(AuthMethod::Native),
            b"caching_sha2_password" => Some(AuthMethod::CachingSha2),
            _ => None,
        }
    }
}

/// What Tessera stores for a user: hashes from which the password cannot be
/// recovered, in the formats MySQL itself uses.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHashes {
    /// SHA1(SHA1(password)); `None` for an empty password.
    pub native: Option<[u8; 20]>,
    /// SHA256(SHA256(password)); `None` for an empty password.
    pub sha2: Option<[u8; 32]>,
}

impl fmt::Debug for PasswordHashes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHashes(..)")
    }
}

impl PasswordHashes {
    /// Hashes a clear-text password (used by `tessera hash-password` and the
    /// playground, never stored).
    pub fn from_password(password: &str) -> Self {
        if password.is_empty() {
            return Self {
                native: None,
                sha2: None,
            };
        }
        let n1 = Sha1::digest(password.as_bytes());
        let s1 = Sha256::digest(password.as_bytes());
        Self {
            native: Some(Sha1::digest(n1).into()),
            sha2: Some(Sha256::digest(s1).into()),
        }
    }

    /// `*HEX` form of the native hash, as in `mysql.user.authentication_string`.
    pub fn native_string(&self) -> String {
        match &self.native {
            Some(h) => format!("*{}", hex_upper(h)),
            None => String::new(),
        }
    }

    pub fn sha2_string(&self) -> String {
        match &self.sha2 {
            Some(h) => hex_upper(h),
            None => String::new(),
        }
    }

    /// Parses the stored forms; empty strings mean "empty password".
    pub fn parse(native: &str, sha2: &str) -> Result<Self, String> {
        let native = if native.is_empty() {
            None
        } else {
            let hex = native
                .strip_prefix('*')
                .ok_or("native hash must look like *<40 hex digits>")?;
            Some(parse_hex::<20>(hex).ok_or("native hash must look like *<40 hex digits>")?)
        };
        let sha2 = if sha2.is_empty() {
            None
        } else {
            Some(parse_hex::<32>(sha2).ok_or("sha2 hash must be 64 hex digits")?)
        };
        if native.is_some() != sha2.is_some() && !(native.is_none() || sha2.is_none()) {
            return Err("hashes disagree".into());
        }
        Ok(Self { native, sha2 })
    }

    pub fn is_empty_password(&self) -> bool {
        self.native.is_none() && self.sha2.is_none()
    }

    /// Checks a `mysql_native_password` scramble against the stored hash.
    pub fn verify_native(&self, nonce: &[u8], response: &[u8]) -> bool {
        match &self.native {
            None => response.is_empty() && self.sha2.is_none(),
            Some(stage2) => {
                if response.len() != 20 {
                    return false;
                }
                let mut h = Sha1::new();
                h.update(nonce);
                h.update(stage2);
                let mask = h.finalize();
                let stage1: Vec<u8> = response
                    .iter()
                    .zip(mask.iter())
                    .map(|(a, b)| a ^ b)
                    .collect();
                ct_eq(&Sha1::digest(&stage1), stage2)
            }
        }
    }

    /// Checks a `caching_sha2_password` fast-path scramble.
    pub fn verify_sha2_scramble(&self, nonce: &[u8], response: &[u8]) -> bool {
        match &self.sha2 {
            None => response.is_empty() && self.native.is_none(),
            Some(stage2) => {
                if response.len() != 32 {
                    return false;
                }
                let mut h = Sha256::new();
                h.update(stage2);
                h.update(nonce);
                let mask = h.finalize();
                let stage1: Vec<u8> = response
                    .iter()
                    .zip(mask.iter())
                    .map(|(a, b)| a ^ b)
                    .collect();
                ct_eq(&Sha256::digest(&stage1), stage2)
            }
        }
    }

    /// Checks a clear-text password obtained by full authentication.
    pub fn verify_clear(&self, password: &[u8]) -> bool {
        match &self.sha2 {
            None => password.is_empty() && self.native.is_none(),
            Some(stage2) => ct_eq(&Sha256::digest(Sha256::digest(password)), stage2),
        }
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The users for whom a caching_sha2 full authentication has succeeded since
/// start, as MySQL's server-side cache: only they may use the fast path.
#[derive(Debug, Default)]
pub struct Sha2Cache {
    users: Mutex<BTreeSet<String>>,
}

impl Sha2Cache {
    pub fn contains(&self, user: &str) -> bool {
        self.users.lock().map(|u| u.contains(user)).unwrap_or(false)
    }
    pub fn insert(&self, user: &str) {
        if let Ok(mut u) = self.users.lock() {
            u.insert(user.to_string());
        }
    }
    pub fn clear(&self) {
        if let Ok(mut u) = self.users.lock() {
            u.clear();
        }
    }
}

/// RSA key pair for caching_sha2 full authentication without TLS: the client
/// asks for the public key and sends its password encrypted with it.
pub struct RsaKey {
    private: RsaPrivateKey,
    public_pem: String,
}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaKey(..)")
    }
}

impl RsaKey {
    /// Generates a 2048-bit key; the randomness comes from the caller.
    pub fn generate<R: rsa::rand_core::CryptoRngCore>(rng: &mut R) -> Result<Self, rsa::Error> {
        let private = RsaPrivateKey::new(rng, 2048)?;
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| rsa::Error::Internal)?;
        Ok(Self {
            private,
            public_pem,
        })
    }

    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Decrypts the client's OAEP(SHA1) block and removes the nonce XOR,
    /// returning the clear-text password without its trailing NUL.
    pub fn decrypt_password(&self, ciphertext: &[u8], nonce: &[u8]) -> Option<Vec<u8>> {
        let mut plain = self.private.decrypt(Oaep::new::<Sha1>(), ciphertext).ok()?;
        if nonce.is_empty() {
            return None;
        }
        for (i, b) in plain.iter_mut().enumerate() {
            *b ^= nonce[i % nonce.len()];
        }
        if plain.last() == Some(&0) {
            plain.pop();
        }
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
    use mysql_common::auth::plugins::mysql_native_password::scramble_native;

    #[test]
    fn native_scramble_verifies() {
        let h = PasswordHashes::from_password("secret");
        let nonce = *b"abcdefghijklmnopqrst";
        let resp = scramble_native(&nonce, b"secret").unwrap();
        assert!(h.verify_native(&nonce, &resp));
        let wrong = scramble_native(&nonce, b"Secret").unwrap();
        assert!(!h.verify_native(&nonce, &wrong));
        assert!(!h.verify_native(&nonce, b""));
    }

    #[test]
    fn native_hash_matches_mysql_format() {
        // PASSWORD('secret') in MySQL/MariaDB.
        let h = PasswordHashes::from_password("secret");
        assert_eq!(
            h.native_string(),
            "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
        );
        let parsed = PasswordHashes::parse(&h.native_string(), &h.sha2_string()).unwrap();
        assert_eq!(parsed, h);
    }

    #[test]
    fn sha2_scramble_and_clear_verify() {
        let h = PasswordHashes::from_password("pw");
        let nonce = *b"01234567890123456789";
        let resp = scramble_sha256(&nonce, b"pw").unwrap();
        assert!(h.verify_sha2_scramble(&nonce, &resp));
        assert!(!h.verify_sha2_scramble(&nonce, &resp[..31]));
        assert!(h.verify_clear(b"pw"));
        assert!(!h.verify_clear(b"px"));
    }

    #[test]
    fn empty_password_accepts_only_empty_response() {
        let h = PasswordHashes::from_password("");
        assert!(h.verify_native(b"x", b""));
        assert!(!h.verify_native(b"x", &[0u8; 20]));
        assert!(h.verify_clear(b""));
    }

    #[test]
    fn rsa_round_trip_with_mysql_common_client_encryption() {
        let mut rng = rand::thread_rng();
        let key = RsaKey::generate(&mut rng).unwrap();
        let nonce = b"nonce-nonce-nonce-20";
        let mut plain = b"hunter2".to_vec();
        plain.push(0);
        for (i, b) in plain.iter_mut().enumerate() {
            *b ^= nonce[i % nonce.len()];
        }
        let ct = mysql_common::crypto::encrypt(&plain, key.public_pem().as_bytes()).unwrap();
        assert_eq!(key.decrypt_password(&ct, nonce).unwrap(), b"hunter2");
    }
}
