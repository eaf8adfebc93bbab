//! Bearer tokens: each has a name and a role (read-only or admin). The store keeps a token's
//! SHA-256, never the token. On its first start the controller makes the `admin` token and
//! shows it once.

use sha2::{Digest, Sha256};
use triad_api::v1::Role;

use crate::model::{keys, now_ms, Db, DbError, TokenRecord};
use crate::store::{Expect, Txn};

pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new secret: 32 random bytes, hex.
pub fn new_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Who presents `secret`, if anyone.
pub async fn lookup(db: &Db, secret: &str) -> Result<Option<TokenRecord>, DbError> {
    Ok(db
        .get::<TokenRecord>(&format!("{}{}", keys::TOKENS, hash(secret)))
        .await?
        .map(|v| v.value))
}

/// Makes token `name`; false when the name is taken.
pub async fn create(db: &Db, name: &str, role: Role, secret: &str) -> Result<bool, DbError> {
    let hashed = hash(secret);
    let record = TokenRecord {
        name: name.to_owned(),
        role,
        created_unix_ms: now_ms(),
    };
    let name_key = format!("{}{name}", keys::TOKEN_NAMES);
    let txn = Txn::new()
        .expect(&name_key, Expect::Absent)
        .put(&name_key, crate::model::encode(&hashed))
        .put(
            format!("{}{hashed}", keys::TOKENS),
            crate::model::encode(&record),
        );
    Ok(db.txn(txn).await?.is_some())
}

/// Deletes token `name`; false when there is none.
pub async fn delete(db: &Db, name: &str) -> Result<bool, DbError> {
    let name_key = format!("{}{name}", keys::TOKEN_NAMES);
    let Some(hashed) = db.get::<String>(&name_key).await? else {
        return Ok(false);
    };
    let txn = Txn::new()
        .expect(&name_key, Expect::ModRevision(hashed.revision))
        .delete(&name_key)
        .delete(format!("{}{}", keys::TOKENS, hashed.value));
    Ok(db.txn(txn).await?.is_some())
}

/// The `admin` token's secret when this start made it (the store had no token at all).
pub async fn bootstrap(db: &Db) -> Result<Option<String>, anyhow::Error> {
    if !db.keys(keys::TOKEN_NAMES).await?.is_empty() {
        return Ok(None);
    }
    let secret = new_secret()?;
    if create(db, "admin", Role::Admin, &secret).await? {
        Ok(Some(secret))
    } else {
        // Another controller made it first.
        Ok(None)
    }
}
