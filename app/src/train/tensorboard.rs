//! TensorBoard event files: what `tensorboard --logdir` (and W&B's and MLflow's
//! TensorBoard importers) read. A file is a sequence of TFRecords (length, its masked
//! CRC-32C, the bytes, their masked CRC-32C), each an `Event` protocol buffer: the first
//! names the file version, each later one holds scalars (`Summary.Value.simple_value`)
//! at a step. We write the few protobuf fields this needs by hand, and read them back
//! ([`read`]) to check what we wrote.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::train::TrainEvent;
use crate::{Error, Result};

/// The folder of a run's (or a comparison's) output that holds its event files.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// The scalars a training step logs, by tag.
pub const STEP_TAGS: [&str; 4] = ["train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_s"];

/// One open event file.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (made if missing), named as TensorFlow names
    /// them (`events.out.tfevents.<seconds>.<host>`, here with the process id and a
    /// counter, so a resumed run adds a file beside the first).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let secs = now().floor() as u64;
        let mut n = 0;
        let path = loop {
            let p = dir.join(format!("events.out.tfevents.{secs}.{host}.{}.{n}", std::process::id()));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let file = File::create(&path).map_err(|e| Error::file(&path, e))?;
        let mut w = Self { out: BufWriter::new(file), path };
        let mut event = Vec::new();
        put_double(&mut event, 1, now());
        put_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `values` (tag, value) as one event at `step`, flushed so a running
    /// TensorBoard sees it.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_tag(&mut value, 2, 5);
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &value);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, now());
        put_tag(&mut event, 2, 0);
        put_varint(&mut event, step);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out.write_all(&rec).and_then(|_| self.out.flush()).map_err(|e| Error::file(&self.path, e))
    }
}

/// A run's training curves as TensorBoard scalars: one step axis across its stages (a
/// sequential run's second task continues where the first ended), and evaluations at
/// the step they follow.
pub struct RunLog {
    writer: EventWriter,
    stage: Option<String>,
    /// Steps of the stages before the current one.
    offset: u64,
    step: u64,
}

impl RunLog {
    /// A log writing into `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        Ok(Self { writer: EventWriter::create(dir)?, stage: None, offset: 0, step: 0 })
    }

    /// Logs a training event of stage `stage` (step scalars; the rest only moves the
    /// step axis).
    pub fn train(&mut self, stage: &str, e: &TrainEvent) -> Result<()> {
        match e {
            TrainEvent::Started { start_step, .. } => {
                // A new stage continues from the last step the previous one took (its
                // schedule's `total_steps` is an estimate: a budget may end it sooner).
                if self.stage.as_deref() != Some(stage) {
                    if self.stage.is_some() {
                        self.offset = self.step;
                    }
                    self.stage = Some(stage.to_string());
                }
                self.step = self.offset + *start_step as u64;
                Ok(())
            }
            TrainEvent::Step(s) => {
                self.step = self.offset + s.step as u64;
                let values = [s.loss, s.lr, s.grad_norm, s.tokens_per_s];
                let mut tagged: Vec<(String, f64)> = STEP_TAGS.iter().map(|t| t.to_string()).zip(values).collect();
                // A mixed run's loss per task, from the same step (`train/loss/<task>`).
                tagged.extend(s.task_losses.iter().map(|(t, l)| (format!("train/loss/{t}"), *l)));
                let tagged: Vec<(&str, f64)> = tagged.iter().map(|(t, v)| (t.as_str(), *v)).collect();
                self.writer.scalars(self.step, &tagged)
            }
            TrainEvent::Notice { .. } | TrainEvent::Checkpoint { .. } => Ok(()),
        }
    }

    /// Logs an evaluation (a task's headline metric) at the current step.
    pub fn eval(&mut self, task: &str, value: f64) -> Result<()> {
        self.writer.scalars(self.step, &[(&format!("eval/{task}"), value)])
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// Its step.
    pub step: u64,
    /// Its tag.
    pub tag: String,
    /// Its value (stored as f32).
    pub value: f32,
}

/// Reads every scalar of an event file, checking each record's checksums.
pub fn read(path: &Path) -> Result<Vec<Scalar>> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let bad = |why: &str| Error::Invalid(format!("{}: {why}", path.display()));
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    let mut first = true;
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(bad("a record is cut off"));
        }
        let (len_bytes, tail) = rest.split_at(8);
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        if u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) != masked_crc(len_bytes) {
            return Err(bad("a record's length fails its checksum"));
        }
        let tail = &tail[4..];
        if tail.len() < len + 4 {
            return Err(bad("a record is cut off"));
        }
        let (data, tail) = tail.split_at(len);
        if u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) != masked_crc(data) {
            return Err(bad("a record's data fails its checksum"));
        }
        rest = &tail[4..];
        let (mut step, mut values, mut version) = (0u64, Vec::new(), None);
        for (field, v) in fields(data).ok_or_else(|| bad("an event is not a valid protocol buffer"))? {
            match (field, v) {
                (2, Value::Varint(s)) => step = s,
                (3, Value::Bytes(b)) => version = Some(String::from_utf8_lossy(b).into_owned()),
                (5, Value::Bytes(summary)) => {
                    for (f, v) in fields(summary).ok_or_else(|| bad("a summary is not valid"))? {
                        if let (1, Value::Bytes(value)) = (f, v) {
                            let (mut tag, mut x) = (String::new(), None);
                            for (f, v) in fields(value).ok_or_else(|| bad("a summary value is not valid"))? {
                                match (f, v) {
                                    (1, Value::Bytes(t)) => tag = String::from_utf8_lossy(t).into_owned(),
                                    (2, Value::Fixed32(bits)) => x = Some(f32::from_bits(bits)),
                                    _ => {}
                                }
                            }
                            if let Some(value) = x {
                                values.push(Scalar { step: 0, tag, value });
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if first && version.as_deref() != Some("brain.Event:2") {
            return Err(bad("the first event does not name the file version"));
        }
        first = false;
        out.extend(values.into_iter().map(|s| Scalar { step, ..s }));
    }
    Ok(out)
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

// --- protocol buffers: the wire format's few pieces an Event needs ---

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A message's fields in order, or `None` when it does not parse.
fn fields(mut b: &[u8]) -> Option<Vec<(u64, Value<'_>)>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut b)?),
            1 => {
                b = b.get(8..)?;
                Value::Fixed64
            }
            2 => {
                let n = varint(&mut b)? as usize;
                let v = b.get(..n)?;
                b = &b[n..];
                Value::Bytes(v)
            }
            5 => {
                let v = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
                b = &b[4..];
                Value::Fixed32(v)
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}

// --- CRC-32C (Castagnoli), masked as TFRecord stores it ---

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::StepStats;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C catalogue's check value, and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn scalars_read_back_and_stages_share_one_axis() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RunLog::create(dir.path()).unwrap();
        let started =
            |total_steps| TrainEvent::Started { total_steps, start_step: 0, trainable_params: 1, examples: 1 };
        let step = |step, loss| {
            TrainEvent::Step(StepStats {
                step,
                total_steps: 2,
                loss,
                lr: 1e-3,
                grad_norm: 0.5,
                tokens: 10,
                tokens_per_s: 100.0,
                elapsed_s: 0.1,
                group_losses: vec![],
                // A mixed run's tasks, named.
                task_losses: vec![("x".into(), loss + 1.0)],
            })
        };
        // Stage a's schedule said 3 steps, its budget ended it after 2: b follows at 3.
        for (stage, losses, total) in [("a", [2.0, 1.5], 3), ("b", [1.25, 1.0], 2)] {
            log.train(stage, &started(total)).unwrap();
            for (i, l) in losses.into_iter().enumerate() {
                log.train(stage, &step(i + 1, l)).unwrap();
            }
            log.eval(stage, 0.75).unwrap();
        }
        let got = read(log.path()).unwrap();
        let loss: Vec<(u64, f32)> = got.iter().filter(|s| s.tag == "train/loss").map(|s| (s.step, s.value)).collect();
        assert_eq!(loss, vec![(1, 2.0), (2, 1.5), (3, 1.25), (4, 1.0)]);
        let evals: Vec<(u64, &str)> =
            got.iter().filter(|s| s.tag.starts_with("eval/")).map(|s| (s.step, s.tag.as_str())).collect();
        assert_eq!(evals, vec![(2, "eval/a"), (4, "eval/b")]);
        assert_eq!(got.iter().filter(|s| s.tag == "train/learning_rate").count(), 4);
        let task: Vec<(u64, f32)> = got.iter().filter(|s| s.tag == "train/loss/x").map(|s| (s.step, s.value)).collect();
        assert_eq!(task, vec![(1, 3.0), (2, 2.5), (3, 2.25), (4, 2.0)]);
        // A flipped byte fails the checksum.
        let mut bytes = std::fs::read(log.path()).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        std::fs::write(log.path(), bytes).unwrap();
        assert!(read(log.path()).unwrap_err().to_string().contains("checksum"));
    }
}
