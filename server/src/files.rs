//! The data folder: every file lives under it, named by ids the server made, so a client
//! never names a path. Files are written to a temporary name, fsynced and renamed
//! (the engine's `checkpoint::write_atomic` for its outputs; uploads and zips here).
//!
//! ```text
//! <data>/multitune.sqlite
//! <data>/reserve                    1 MiB kept free for the database (released on a full disk)
//! <data>/tmp/                       uploads in flight (emptied at start-up)
//! <data>/datasets/<id>/<file>       uploaded datasets, as uploaded
//! <data>/experiments/<id>/out/      report.json, report.md, charts/, adapters/
//! <data>/experiments/<id>/state/    checkpoints and finished-run records (resume)
//! <data>/experiments/<id>/merged/   merged models built on request
//! ```

use std::path::{Path, PathBuf};

use crate::error::{ApiError, ApiResult};

/// A fresh id: 16 lowercase hex digits.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Checks that `id` is one of ours (16 lowercase hex digits) before it goes near a path
/// or a query.
pub fn check_id<'a>(what: &str, id: &'a str) -> ApiResult<&'a str> {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(id)
    } else {
        Err(ApiError::bad_request(format!("`{}` is not a valid {what} id", truncate(id, 40))))
    }
}

/// Shortens text quoted in an error message.
pub fn truncate(s: &str, n: usize) -> String {
    let t: String = s.chars().take(n).collect();
    if t.len() < s.len() {
        format!("{t}…")
    } else {
        t
    }
}

/// Bytes the reserve holds: room for the status updates and events that say the disk is full.
pub const RESERVE_BYTES: u64 = 1 << 20;

/// The layout of a data folder.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the folders (and empties `tmp/`).
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let d = Self { root: root.to_path_buf() };
        std::fs::create_dir_all(d.root.join("datasets"))?;
        std::fs::create_dir_all(d.root.join("experiments"))?;
        let tmp = d.tmp();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(d)
    }

    /// The database file.
    pub fn database(&self) -> PathBuf {
        self.root.join("multitune.sqlite")
    }

    /// The reserve: [`RESERVE_BYTES`] of zeros that hold space on the data folder's disk, so
    /// that when the disk fills the server can release it and still record why training
    /// stopped.
    pub fn reserve(&self) -> PathBuf {
        self.root.join("reserve")
    }

    /// Makes sure the reserve is in place (written whole, or not at all). Fails with the
    /// disk's error when there is no room for it: the disk is (still) full.
    pub fn ensure_reserve(&self) -> std::io::Result<()> {
        let path = self.reserve();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == RESERVE_BYTES) {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        let result = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            let zeros = vec![0u8; 64 << 10];
            for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
                f.write_all(&zeros)?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Gives the reserve's space back to the disk; whether there was one.
    pub fn release_reserve(&self) -> bool {
        std::fs::remove_file(self.reserve()).is_ok()
    }

    /// Uploads in flight.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A dataset's folder.
    pub fn dataset(&self, id: &str) -> PathBuf {
        self.root.join("datasets").join(id)
    }

    /// An experiment's folder.
    pub fn experiment(&self, id: &str) -> PathBuf {
        self.root.join("experiments").join(id)
    }
}

/// Zips folders into `dest` (atomically): each `(folder, name)` becomes `name/…` in the
/// archive. Safetensors are stored, the rest deflated.
pub fn zip_folders(dest: &Path, folders: &[(PathBuf, String)]) -> std::io::Result<()> {
    zip_folders_where(dest, folders, &|_| true)
}

/// [`zip_folders`] keeping only the files `keep` accepts.
pub fn zip_folders_where(
    dest: &Path,
    folders: &[(PathBuf, String)],
    keep: &dyn Fn(&Path) -> bool,
) -> std::io::Result<()> {
    use zip::write::SimpleFileOptions;
    let tmp = dest.with_extension(format!("tmp-{:08x}", rand::random::<u32>()));
    let result = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut z = zip::ZipWriter::new(f);
        for (dir, name) in folders {
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                let mut entries: Vec<_> = std::fs::read_dir(&d)?.flatten().collect();
                entries.sort_by_key(|e| e.file_name());
                for e in entries {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                        continue;
                    }
                    if !keep(&p) {
                        continue;
                    }
                    let rel = p.strip_prefix(dir).map_err(std::io::Error::other)?;
                    let inner = format!("{name}/{}", rel.to_string_lossy().replace('\\', "/"));
                    let stored = p.extension().is_some_and(|x| x == "safetensors" || x == "png" || x == "gguf");
                    let opts = SimpleFileOptions::default()
                        .compression_method(if stored {
                            zip::CompressionMethod::Stored
                        } else {
                            zip::CompressionMethod::Deflated
                        })
                        .large_file(std::fs::metadata(&p)?.len() > u32::MAX as u64 / 2);
                    z.start_file(inner, opts).map_err(std::io::Error::other)?;
                    std::io::copy(&mut std::fs::File::open(&p)?, &mut z)?;
                }
            }
        }
        let f = z.finish().map_err(std::io::Error::other)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, dest),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_made_once_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        d.ensure_reserve().unwrap();
        assert_eq!(std::fs::metadata(d.reserve()).unwrap().len(), RESERVE_BYTES);
        d.ensure_reserve().unwrap();
        assert!(d.release_reserve());
        assert!(!d.release_reserve());
        assert!(!d.reserve().with_extension("tmp").exists());
    }

    #[test]
    fn ids_are_checked_strictly() {
        assert!(check_id("x", &new_id()).is_ok());
        for bad in ["", "../etc/passwd", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcde/"]
        {
            assert!(check_id("x", bad).is_err(), "{bad}");
        }
    }
}
