//! Crash-safe file writing: every file goes to a temporary name in the same folder, is
//! fsynced, then renamed over the target, so a reader sees the old file or the new one,
//! never half of one.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::{Error, Result};

fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, bytes, false)
}

/// [`write_atomic`] for a secret: the file is readable by its owner only (mode 0600 on
/// Unix) from the moment it is created, so it is never briefly world-readable.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, bytes, true)
}

fn write_atomic_with(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let tmp = temp_name(path);
    let result = (|| -> std::io::Result<()> {
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            open.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = open.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the folder is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, e));
    }
    Ok(())
}

/// Writes named tensors (and optional string metadata) as safetensors, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let contiguous: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| Ok((n.clone(), t.contiguous()?))).collect::<Result<_>>()?;
    let bytes = safetensors::serialize(contiguous.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// Reads a safetensors file: its tensors by name and its string metadata.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::Adapter(format!("{}: not a safetensors file: {e}", path.display())))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?.into_iter().collect();
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn safetensors_round_trip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let t = Tensor::arange(0f32, 6., &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        let meta = HashMap::from([("step".to_string(), "7".to_string())]);
        write_safetensors(&p, &[("x".into(), t.t().unwrap())], Some(meta)).unwrap();
        let (back, meta) = read_safetensors(&p, &Device::Cpu).unwrap();
        assert_eq!(back["x"].to_vec2::<f32>().unwrap(), vec![vec![0., 3.], vec![1., 4.], vec![2., 5.]]);
        assert_eq!(meta["step"], "7");
    }
}
