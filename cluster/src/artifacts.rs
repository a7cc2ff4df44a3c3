//! Artifacts every machine of a cluster reads and writes, through the `object_store`
//! crate: `file:///shared/folder` (a folder every machine mounts; writes are atomic: a
//! temporary file renamed) or `s3://bucket/prefix` (any S3-compatible store; credentials
//! and endpoint from the usual `AWS_*` variables). Blocking: the callers are threads.
//!
//! Layout under the root: `experiments/<id>/data/<task>/{train,eval}/<file>` (the
//! server's copies of the datasets), `experiments/<id>/jobs/<part>/attempt-<n>/
//! {checkpoint-<step>,result}/{out,state}/…` (what each attempt wrote; attempts never
//! share a folder, so a late writer cannot touch a newer attempt's files).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};

/// An artifact store with a root prefix.
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    root: String,
    url: String,
    rt: tokio::runtime::Runtime,
}

impl Artifacts {
    /// Opens the store `url` names (`file:///abs/folder` or `s3://bucket/prefix`).
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).with_context(|| {
            format!("the artifacts location `{url}` is not a URL: use file:///absolute/folder or s3://bucket/prefix")
        })?;
        let (store, root): (Arc<dyn ObjectStore>, String) = match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| anyhow::anyhow!("`{url}` names no absolute folder (file:///absolute/folder)"))?;
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating the artifacts folder {}", dir.display()))?;
                (Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?), String::new())
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("`{url}` names no bucket (s3://bucket/prefix)"))?;
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .with_context(|| format!("opening {url} (credentials and endpoint come from AWS_* variables)"))?;
                (Arc::new(s3), parsed.path().trim_matches('/').to_string())
            }
            other => anyhow::bail!("artifacts scheme `{other}` in `{url}` is not file or s3"),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self { store, root, url: url.to_string(), rt })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, rel: &str) -> Key {
        if self.root.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.root))
        }
    }

    /// Stores one file's bytes at `rel`.
    pub fn put(&self, rel: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let key = self.key(rel);
        self.rt
            .block_on(self.store.put(&key, PutPayload::from(bytes)))
            .with_context(|| format!("writing {rel} to {}", self.url))?;
        Ok(())
    }

    /// One stored file's bytes.
    pub fn get(&self, rel: &str) -> anyhow::Result<Vec<u8>> {
        let key = self.key(rel);
        let bytes = self
            .rt
            .block_on(async { self.store.get(&key).await?.bytes().await })
            .with_context(|| format!("reading {rel} from {}", self.url))?;
        Ok(bytes.to_vec())
    }

    /// Stores every file under `dir` below `rel` (sub-folders kept). Returns the files.
    pub fn put_dir(&self, dir: &Path, rel: &str) -> anyhow::Result<usize> {
        let mut n = 0;
        for file in files_under(dir)? {
            let sub = file.strip_prefix(dir).expect("under dir");
            let name = sub.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/");
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            self.put(&format!("{rel}/{name}"), bytes)?;
            n += 1;
        }
        Ok(n)
    }

    /// Writes every file stored below `rel` into `dir` (atomically each). Returns the files.
    pub fn get_dir(&self, rel: &str, dir: &Path) -> anyhow::Result<usize> {
        let prefix = self.key(rel);
        let metas: Vec<_> = self
            .rt
            .block_on(self.store.list(Some(&prefix)).try_collect::<Vec<_>>())
            .with_context(|| format!("listing {rel} in {}", self.url))?;
        for m in &metas {
            let sub: Vec<_> = m.location.prefix_match(&prefix).map(|p| p.collect()).unwrap_or_default();
            if sub.is_empty() {
                continue;
            }
            let mut path = dir.to_path_buf();
            for part in &sub {
                let part = part.as_ref();
                if part == ".." || part == "." || part.contains('/') {
                    anyhow::bail!("refusing the stored name {} (it leaves its folder)", m.location);
                }
                path.push(part);
            }
            let bytes = self
                .rt
                .block_on(async { self.store.get(&m.location).await?.bytes().await })
                .with_context(|| format!("reading {} from {}", m.location, self.url))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            multitune::persist::write_atomic(&path, &bytes)?;
        }
        Ok(metas.len())
    }

    /// Removes everything stored below `rel`.
    pub fn delete_dir(&self, rel: &str) -> anyhow::Result<()> {
        let prefix = self.key(rel);
        let metas: Vec<_> = self.rt.block_on(self.store.list(Some(&prefix)).try_collect::<Vec<_>>())?;
        for m in metas {
            self.rt.block_on(self.store.delete(&m.location))?;
        }
        Ok(())
    }
}

/// Every file below `dir` (none if it does not exist), sorted.
fn files_under(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in entries {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_goes_in_and_comes_back_out() {
        let root = tempfile::tempdir().unwrap();
        let a = Artifacts::open(&format!("file://{}", root.path().join("store").display())).unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("out/adapters/x")).unwrap();
        std::fs::write(src.path().join("out/adapters/x/a.bin"), b"abc").unwrap();
        std::fs::write(src.path().join("top.json"), b"{}").unwrap();
        assert_eq!(a.put_dir(src.path(), "jobs/base/attempt-1/result").unwrap(), 2);
        let dst = tempfile::tempdir().unwrap();
        assert_eq!(a.get_dir("jobs/base/attempt-1/result", dst.path()).unwrap(), 2);
        assert_eq!(std::fs::read(dst.path().join("out/adapters/x/a.bin")).unwrap(), b"abc");
        assert_eq!(std::fs::read(dst.path().join("top.json")).unwrap(), b"{}");
        // A prefix that is a prefix of another's name is not mixed up with it.
        assert_eq!(a.get_dir("jobs/base/attempt-1/res", tempfile::tempdir().unwrap().path()).unwrap(), 0);
        a.delete_dir("jobs").unwrap();
        assert_eq!(a.get_dir("jobs/base/attempt-1/result", dst.path()).unwrap(), 0);
    }

    #[test]
    fn bad_locations_are_named() {
        let e = Artifacts::open("/no/scheme").err().unwrap().to_string();
        assert!(e.contains("is not a URL"), "{e}");
        let e = Artifacts::open("ftp://host/x").err().unwrap().to_string();
        assert!(e.contains("not file or s3"), "{e}");
    }
}
