//! WireGuard keys: 32-byte Curve25519 keys and preshared keys, parsed from and
//! rendered to the two encodings the ecosystem uses (hex on the UAPI socket,
//! base64 in `wg` and config files).
//!
//! Secret material never appears in `Debug` output, so a stray `{:?}` in a log
//! line cannot leak it.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::fmt;
use x25519_dalek as x25519;

/// Why a key string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key must be 64 hex characters (32 bytes), got {0} characters")]
    HexLength(usize),
    #[error("key is not valid hex")]
    Hex,
    #[error("key must be 44 base64 characters (32 bytes)")]
    Base64,
    #[error("could not read randomness from the OS: {0}")]
    Random(String),
}

fn from_hex(s: &str) -> Result<[u8; 32], KeyError> {
    if s.len() != 64 {
        return Err(KeyError::HexLength(s.len()));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyError::Hex)?;
    Ok(out)
}

fn from_base64(s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = BASE64.decode(s.trim()).map_err(|_| KeyError::Base64)?;
    bytes.try_into().map_err(|_| KeyError::Base64)
}

/// The encodings every key type shares.
macro_rules! key_encodings {
    ($t:ident) => {
        impl $t {
            pub fn from_hex(s: &str) -> Result<Self, KeyError> {
                from_hex(s).map(Self)
            }
            pub fn from_base64(s: &str) -> Result<Self, KeyError> {
                from_base64(s).map(Self)
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            pub fn to_base64(&self) -> String {
                BASE64.encode(self.0)
            }
        }
    };
}

/// A peer's or our own public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);
key_encodings!(PublicKey);

impl PublicKey {
    /// The key as the protocol core takes it.
    pub fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// Our static private key. Clamping is applied by x25519 when it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(pub [u8; 32]);
key_encodings!(PrivateKey);

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }
    /// All-zero means "no key" on the UAPI socket.
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.to_x25519()).to_bytes())
    }
    /// The key as the protocol core takes it.
    pub fn to_x25519(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// An optional symmetric key mixed into the handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresharedKey(pub [u8; 32]);
key_encodings!(PresharedKey);

impl PresharedKey {
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_round_trip() {
        let k = PrivateKey::generate().unwrap();
        assert_eq!(PrivateKey::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(PrivateKey::from_base64(&k.to_base64()).unwrap(), k);
        let p = k.public_key();
        assert_eq!(PublicKey::from_base64(&p.to_base64()).unwrap(), p);
        assert_eq!(PublicKey::from_hex(&p.to_hex()).unwrap(), p);
    }

    #[test]
    fn public_key_matches_known_vector() {
        // RFC 7748 section 6.1: Alice's private and public keys.
        let sk = PrivateKey::from_hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        )
        .unwrap();
        assert_eq!(
            sk.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(PublicKey::from_hex("abc"), Err(KeyError::HexLength(3)));
        assert_eq!(PublicKey::from_hex(&"zz".repeat(32)), Err(KeyError::Hex));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Base64));
        assert_eq!(PublicKey::from_base64("!!!"), Err(KeyError::Base64));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let k = PrivateKey::generate().unwrap();
        let shown = format!("{:?} {:?}", k, PresharedKey(k.0));
        assert!(!shown.contains(&k.to_hex()));
        assert!(!shown.contains(&k.to_base64()));
    }
}
