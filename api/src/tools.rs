//! The host programs a daemon runs, and the check each daemon makes for them when it starts:
//! a missing program is one clear line at start naming it and its Debian package, not a 500 on
//! the first request that needs it.
//!
//! `scripts/lib/packages` is the list the scripts install from; `scripts/check-tools` holds
//! every `HostTool` declared in the sources to that list, so the two cannot drift.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A program a daemon spawns, and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTool {
    pub command: &'static str,
    pub package: &'static str,
    /// What the daemon needs it for, said when it is missing.
    pub needed_for: &'static str,
}

/// A host program that is not on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{command} is not installed: install the Debian package {package} (needed for {needed_for})"
)]
pub struct MissingTool {
    pub command: &'static str,
    pub package: &'static str,
    pub needed_for: &'static str,
}

impl HostTool {
    /// Where the program is on this process's `PATH`.
    pub fn find(&self) -> Option<PathBuf> {
        self.find_in(&std::env::var_os("PATH").unwrap_or_default())
    }

    /// Where the program is on `path` (a `PATH`-style list of directories).
    pub fn find_in(&self, path: &OsStr) -> Option<PathBuf> {
        std::env::split_paths(path)
            .map(|dir| dir.join(self.command))
            .find(|file| {
                std::fs::metadata(file)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }

    pub fn missing(&self) -> MissingTool {
        MissingTool {
            command: self.command,
            package: self.package,
            needed_for: self.needed_for,
        }
    }
}

/// The first of `tools` that is not on `PATH`, as an error.
pub fn require(tools: &[HostTool]) -> Result<(), MissingTool> {
    match tools.iter().find(|t| t.find().is_none()) {
        Some(tool) => Err(tool.missing()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SH: HostTool = HostTool {
        command: "sh",
        package: "dash",
        needed_for: "tests",
    };

    #[test]
    fn found_only_where_an_executable_file_is() {
        let dir = std::env::temp_dir().join(format!("triad-tools-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sh")).unwrap();
        let not_executable = dir.join("plain");
        std::fs::create_dir_all(&not_executable).unwrap();
        std::fs::write(not_executable.join("sh"), "").unwrap();
        let dirs = std::env::join_paths([&dir, &not_executable]).unwrap();
        assert_eq!(
            SH.find_in(&dirs),
            None,
            "a directory or a file without x bits is no program"
        );

        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("sh"), "").unwrap();
        std::fs::set_permissions(bin.join("sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dirs = std::env::join_paths([&dir, &not_executable, &bin]).unwrap();
        assert_eq!(SH.find_in(&dirs), Some(bin.join("sh")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_message_names_the_command_and_its_package() {
        let missing = HostTool {
            command: "triad-no-such-tool",
            package: "triad-no-such-package",
            needed_for: "nothing",
        };
        assert_eq!(
            require(&[SH, missing]).unwrap_err().to_string(),
            "triad-no-such-tool is not installed: install the Debian package \
             triad-no-such-package (needed for nothing)"
        );
        assert_eq!(require(&[SH]), Ok(()));
    }
}
