//! The data dir: its lock, `endpoints.json`, the admin token, and its file modes.
//!
//! Layout: `LOCK` (held while a server runs), `registry.redb`, `pubsub/`, `telemetry.sqlite`,
//! `tls/`, `admin-token` (not in `--dev`), `endpoints.json` (written atomically once every
//! listener is bound, removed at clean shutdown).
//!
//! Modes: the dir and every dir in it are `DATA_DIR_MODE` (0700), every file `DATA_FILE_MODE`
//! (0600) or tighter. A dir left wider by an older version or by hand is tightened when it is
//! opened, each change logged; `tighten_quietly` repeats the pass once start-up created its files.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use perch_store::embedded::{DATA_FILE_MODE, create_private_dir_all};
use serde::{Deserialize, Serialize};

/// Permission bits no data dir entry may have: any access for group or others.
const SHARED_BITS: u32 = 0o077;

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
    /// Creates the dir if missing (0700), takes its lock (a second server on the same dir
    /// fails), and takes group and other access off everything in it, logging each change.
    pub fn open(path: &Path) -> Result<DataDir> {
        create_private_dir_all(path)
            .with_context(|| format!("cannot create data dir {}", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("cannot resolve data dir {}", path.display()))?;
        let lock_path = path.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(DATA_FILE_MODE)
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
        for (entry, old) in tighten_modes(&path) {
            tracing::warn!(
                path = %entry.display(),
                old_mode = format!("{old:o}"),
                new_mode = format!("{:o}", old & !SHARED_BITS),
                "a data dir entry was open to other users; took their access away"
            );
        }
        Ok(DataDir { path, _lock: lock })
    }

    /// Tightens modes again without logging each change: for files that start-up code created
    /// with the default umask (certificates, which are public anyway).
    pub fn tighten_quietly(&self) {
        let changed = tighten_modes(&self.path);
        if !changed.is_empty() {
            tracing::debug!(entries = changed.len(), "tightened new data dir entries");
        }
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
        write_atomically(&self.path.join("endpoints.json"), &json, DATA_FILE_MODE)
    }

    pub fn remove_endpoints(&self) {
        let _ = fs::remove_file(self.path.join("endpoints.json"));
    }
}

/// Writes a secret file readable by its owner only (0600), atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomically(path, contents, DATA_FILE_MODE)
}

/// Takes group and other permission bits off `root` and everything under it (symbolic links are
/// neither changed nor followed); returns each entry changed with its old mode. An entry that
/// cannot be changed is logged and left as it is: the server still starts.
fn tighten_modes(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut changed = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // removed meanwhile
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(&path)
        {
            pending.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & SHARED_BITS == 0 {
            continue;
        }
        let wanted = mode & !SHARED_BITS;
        match fs::set_permissions(&path, Permissions::from_mode(wanted)) {
            Ok(()) => changed.push((path, mode)),
            Err(e) => tracing::error!(
                path = %path.display(),
                error = %e,
                "cannot take other users' access off a data dir entry"
            ),
        }
    }
    changed
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

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_data_dir_and_its_own_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("new").join("data");
        let dir = DataDir::open(&path).unwrap();
        dir.write_endpoints(&Endpoints {
            admin: "a".into(),
            grpc: "g".into(),
            mqtt: None,
            mqtt_plain: None,
            device_http: None,
            ca: "c".into(),
        })
        .unwrap();
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&tmp.path().join("new")), 0o700);
        assert_eq!(mode(&path.join("LOCK")), 0o600);
        assert_eq!(mode(&path.join("endpoints.json")), 0o600);
    }

    #[test]
    fn opening_a_wider_data_dir_tightens_everything_in_it_but_not_link_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        let set = |p: &Path, m: u32| fs::set_permissions(p, Permissions::from_mode(m)).unwrap();
        fs::create_dir_all(path.join("pubsub").join("log")).unwrap();
        fs::write(path.join("registry.redb"), b"x").unwrap();
        fs::write(path.join("pubsub").join("log").join("1.seg"), b"x").unwrap();
        let outside = tmp.path().join("outside.txt");
        fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, path.join("link")).unwrap();
        set(&path, 0o755);
        set(&path.join("pubsub"), 0o775);
        set(&path.join("registry.redb"), 0o644);
        set(&path.join("pubsub").join("log").join("1.seg"), 0o666);
        set(&outside, 0o644);

        let _dir = DataDir::open(&path).unwrap();
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&path.join("pubsub")), 0o700);
        assert_eq!(mode(&path.join("pubsub").join("log")), 0o700);
        assert_eq!(mode(&path.join("registry.redb")), 0o600);
        assert_eq!(mode(&path.join("pubsub").join("log").join("1.seg")), 0o600);
        assert_eq!(mode(&outside), 0o644, "symbolic links are not followed");
        assert!(
            tighten_modes(&path).is_empty(),
            "a second pass changes nothing"
        );
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
