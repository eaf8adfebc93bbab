//! Files that hold secrets (tokens, keys, the cluster key, the controller's store): written
//! mode 0600 through a temporary file, and checked when a daemon starts, which makes one that
//! others can read private again and says so.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` (mode 0600, its directory made if need be): the old file or the
/// new one after a crash or a power cut, never a mix (a temporary file, fsync, rename, fsync
/// of the directory).
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // An older temporary file may have had other bits.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes.as_ref())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// Makes the secret file at `path` private to its owner when its group or others could read
/// or write it; the mode it had then, for a warning. Nothing when there is no such file.
pub fn check(path: &Path) -> std::io::Result<Option<u32>> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_private_and_repaired_when_opened_up() {
        let dir = std::env::temp_dir().join(format!("triad-secrets-{}", std::process::id()));
        let file = dir.join("sub/key");
        write(&file, "secret").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "secret");
        assert_eq!(check(&file).unwrap(), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(check(&file).unwrap(), Some(0o644));
        assert_eq!(mode(&file), 0o600);
        assert_eq!(check(&dir.join("none")).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
