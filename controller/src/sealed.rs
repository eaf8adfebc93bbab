//! Secrets the controller must keep usable, not just checkable: each node's token, which it
//! presents to the node's hostd. The store holds them sealed (ChaCha20-Poly1305) under a key
//! kept in a file of its own (mode 0600), so that a dump of the store alone gives no node
//! away. A backup carries the key beside the store.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "sealed:";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("reading or writing the store key {0}: {1}")]
    File(String, #[source] std::io::Error),
    #[error("the store key {0} is not 64 hex digits")]
    Malformed(String),
    #[error("no random bytes")]
    Random,
    #[error("a sealed secret does not open with this store key (the store and the key are not of one controller)")]
    Open,
}

/// The key secrets are sealed with in the store.
pub struct StoreKey {
    key: LessSafeKey,
    hex: String,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey")
    }
}

impl StoreKey {
    /// The key in `path`, made (32 random bytes, hex) when there is none.
    pub fn load_or_make(path: &Path) -> Result<Self, SealError> {
        let file_error = |e| SealError::File(path.display().to_string(), e);
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(text.trim())
                .ok_or_else(|| SealError::Malformed(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| SealError::Random)?;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                triad_api::secrets::write(path, format!("{hex}\n")).map_err(file_error)?;
                Self::from_hex(&hex).ok_or_else(|| SealError::Malformed(path.display().to_string()))
            }
            Err(e) => Err(file_error(e)),
        }
    }

    /// The key of 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
            hex: hex.to_ascii_lowercase(),
        })
    }

    /// The key as its file holds it.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// `secret` sealed: `sealed:` and the hex of a random nonce, the ciphertext and its tag.
    pub fn seal(&self, secret: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| SealError::Random)?;
        let hex: String = nonce
            .iter()
            .chain(&data)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(format!("{PREFIX}{hex}"))
    }

    /// What `seal` sealed. A value that is not sealed (a record from before sealing) is the
    /// secret itself.
    pub fn open(&self, stored: &str) -> Result<String, SealError> {
        let Some(hex) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<_>>()
            .ok_or(SealError::Open)?;
        if hex.len() % 2 != 0 || bytes.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_with_the_key_in_its_file_and_opened_only_by_it() {
        let dir = std::env::temp_dir().join(format!("triad-sealed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = StoreKey::load_or_make(&dir.join("store.key")).unwrap();
        let again = StoreKey::load_or_make(&dir.join("store.key")).unwrap();
        assert_eq!(key.hex(), again.hex());
        let sealed = key.seal("node-secret").unwrap();
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("node-secret"));
        assert_ne!(
            key.seal("node-secret").unwrap(),
            sealed,
            "a nonce of its own"
        );
        assert_eq!(again.open(&sealed).unwrap(), "node-secret");
        assert_eq!(key.open("plain-old").unwrap(), "plain-old");
        let other = StoreKey::load_or_make(&dir.join("other.key")).unwrap();
        assert!(other.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert!(key.open(&tampered).is_err());
        assert!(key.open("sealed:zz").is_err());
        std::fs::write(dir.join("bad.key"), "short").unwrap();
        assert!(StoreKey::load_or_make(&dir.join("bad.key")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
