//! The node's token: a secret made on hostd's first start and kept in `state_dir/node-token`
//! (mode 0600). The controller presents it on every call over TCP; an operator reads it on the
//! node (`triad-hostd token`) to join the node, which proves they hold the node.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("node-token")
}

/// The node's token, made if there is none yet.
pub fn load_or_make(state_dir: &Path) -> Result<String, Error> {
    if let Some(token) = read(state_dir)? {
        return Ok(token);
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::System(format!("reading /dev/urandom: {e}")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let file = path(state_dir);
    triad_api::secrets::write(&file, &token)
        .map_err(|e| Error::System(format!("writing {}: {e}", file.display())))?;
    Ok(token)
}

/// The node's token, if hostd has made one.
pub fn read(state_dir: &Path) -> Result<Option<String>, Error> {
    let file = path(state_dir);
    match std::fs::read_to_string(&file) {
        Ok(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::System(format!("reading {}: {e}", file.display()))),
    }
}

/// Whether `presented` is `token`, in time that does not depend on where they differ.
pub fn matches(token: &str, presented: &str) -> bool {
    token.len() == presented.len()
        && token
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read() {
        let dir = std::env::temp_dir().join(format!("triad-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), None);
        let token = load_or_make(&dir).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_make(&dir).unwrap(), token);
        let mode = std::fs::metadata(path(&dir)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert!(matches(&token, &token.clone()));
        assert!(!matches(&token, &token[1..]));
        assert!(!matches(&token, &"0".repeat(64)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
