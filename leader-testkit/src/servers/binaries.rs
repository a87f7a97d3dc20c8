//! Finding server binaries: `PATH`, then Debian's versioned Postgres folders.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where Debian installs Postgres server binaries (`/usr/lib/postgresql/15/bin`).
const POSTGRES_LIB: &str = "/usr/lib/postgresql";

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Debian's Postgres binary folders, newest major version first.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(POSTGRES_LIB) else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// Finds `binary` on `PATH`, then in `/usr/sbin`, `/sbin` and
/// `/usr/lib/postgresql/*/bin`.
///
/// # Errors
///
/// [`Error::MissingBinary`] naming the binary, the Debian `package` that
/// provides it and `env_var`, the variable that selects an external server.
pub(crate) fn find_binary(
    binary: &'static str,
    package: &'static str,
    env_var: &'static str,
) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.push(PathBuf::from("/sbin"));
    dirs.extend(postgres_bin_dirs());
    dirs.into_iter()
        .map(|dir| dir.join(binary))
        .find(|p| is_executable(p))
        .ok_or_else(|| Error::MissingBinary {
            binary,
            package,
            extra: String::from(" or in /usr/sbin, /sbin, /usr/lib/postgresql/*/bin"),
            env_var,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_binary_package_and_env_var() {
        let err = find_binary("no-such-server-xyz", "no-such-package", "LEADER_TEST_X_URL")
            .expect_err("binary must not exist");
        let text = err.to_string();
        for needle in [
            "no-such-server-xyz",
            "apt-get install -y no-such-package",
            "LEADER_TEST_X_URL",
        ] {
            assert!(text.contains(needle), "{text:?} should contain {needle:?}");
        }
    }

    #[test]
    fn finds_binaries_on_path() {
        let sh = find_binary("sh", "dash", "X").expect("sh is on every Debian machine");
        assert!(sh.ends_with("sh"));
    }
}
