//! The data dir: its lock, `endpoints.json`, and the admin token.
//!
//! Layout: `LOCK` (held while a server runs), `registry.redb`, `tls/`, `admin-token` (0600, not
//! in `--dev`), `endpoints.json` (written atomically once every listener is bound, removed at
//! clean shutdown).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Admin tokens are this many random bytes, hex-encoded.
const ADMIN_TOKEN_BYTES: usize = 32;

/// An open data dir whose lock this process holds until it is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

/// Where each listener ended up, for tests, scripts and the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    pub admin: String,
    pub grpc: String,
    pub mqtt: Option<String>,
    pub mqtt_plain: Option<String>,
    pub device_http: Option<String>,
    pub ca: String,
}

impl DataDir {
    /// Creates the dir if missing and takes its lock; a second server on the same dir fails.
    pub fn open(path: &Path) -> Result<DataDir> {
        fs::create_dir_all(path)
            .with_context(|| format!("cannot create data dir {}", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("cannot resolve data dir {}", path.display()))?;
        let lock_path = path.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "data dir {} is in use by another perch server (lock {} is held); stop it or pass another --data-dir",
                path.display(),
                lock_path.display()
            );
        }
        // A stale endpoints file from a crashed run must not mislead anyone waiting for ours.
        let _ = fs::remove_file(path.join("endpoints.json"));
        Ok(DataDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn registry_path(&self) -> PathBuf {
        self.path.join("registry.redb")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.path.join("tls")
    }

    /// The admin token, created (0600) on first use.
    pub fn admin_token(&self) -> Result<String> {
        let path = self.path.join("admin-token");
        match fs::read_to_string(&path) {
            Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let bytes: [u8; ADMIN_TOKEN_BYTES] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&path, token.as_bytes())?;
        Ok(token)
    }

    /// Writes `endpoints.json` atomically (temp file + rename).
    pub fn write_endpoints(&self, endpoints: &Endpoints) -> Result<()> {
        let json = serde_json::to_vec_pretty(endpoints)?;
        write_atomically(&self.path.join("endpoints.json"), &json, 0o644)
    }

    pub fn remove_endpoints(&self) {
        let _ = fs::remove_file(self.path.join("endpoints.json"));
    }
}

/// Writes a secret file readable by its owner only (0600), atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomically(path, contents, 0o600)
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads `endpoints.json` of a data dir (for the CLI).
pub fn read_endpoints(data_dir: &Path) -> Result<Endpoints> {
    let path = data_dir.join("endpoints.json");
    let bytes = fs::read(&path).with_context(|| {
        format!(
            "cannot read {}; is `perch serve --data-dir {}` running? (or pass --endpoint)",
            path.display(),
            data_dir.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is malformed", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDir::open(tmp.path()).unwrap();
        let err = DataDir::open(tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains("in use by another perch server"),
            "{err}"
        );
        drop(first);
        DataDir::open(tmp.path()).unwrap();
    }

    #[test]
    fn admin_token_is_private_and_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let token = dir.admin_token().unwrap();
        assert_eq!(token.len(), ADMIN_TOKEN_BYTES * 2);
        assert_eq!(dir.admin_token().unwrap(), token);
        let mode = fs::metadata(tmp.path().join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
