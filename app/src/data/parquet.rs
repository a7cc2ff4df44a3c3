//! Parquet files, the storage format of Hugging Face datasets (`Dataset.to_parquet`, the
//! Hub's files, pandas and polars): the schema is checked against the format's fields,
//! then every row becomes the JSON object a JSONL line would be, so each format reads,
//! and is judged, exactly as in JSONL. Nested `messages` / `conversations` columns (a
//! list of structs) become lists of objects.

use bytes::Bytes;
use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Value};

use super::Format;
use super::{Issue, Limits};

/// The magic bytes at both ends of a Parquet file.
const MAGIC: &[u8; 4] = b"PAR1";

/// Why a file named `.parquet` is refused when it does not look like one.
pub const NOT_PARQUET: &str = "is not a Parquet file: it does not start with the bytes `PAR1`";

/// Whether `bytes` start like a Parquet file (the caller reports truncation).
pub fn is_parquet(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// How many times the file's size its decompressed pages may take: a small file that
/// inflates past this is refused before its rows are read.
const MAX_INFLATION: u64 = 8;

/// The rows of a Parquet file as JSON objects with their 1-based row numbers, or `None`
/// when the file as a whole is refused; every problem found goes to `issue`.
pub fn read(
    bytes: &[u8],
    forced: Option<Format>,
    limits: &Limits,
    issue: &mut dyn FnMut(Issue),
) -> Option<Vec<(usize, Value)>> {
    if bytes.len() < 12 || !bytes.ends_with(MAGIC) {
        issue(Issue::line(
            0,
            "is not a whole Parquet file: it does not end with the bytes `PAR1` (truncated, or still being written?)",
        ));
        return None;
    }
    let reader = match SerializedFileReader::new(Bytes::copy_from_slice(bytes)) {
        Ok(r) => r,
        Err(e) => {
            issue(Issue::line(0, format!("is not a readable Parquet file: {e}")));
            return None;
        }
    };
    let meta = reader.metadata();
    let rows = meta.file_metadata().num_rows().max(0) as usize;
    if rows > limits.max_rows {
        issue(Issue::line(0, format!("the file has {rows} rows; the limit is {}", limits.max_rows)));
        return None;
    }
    let inflated: i64 = meta.row_groups().iter().map(|g| g.total_byte_size()).sum();
    let cap = limits.max_bytes.saturating_mul(MAX_INFLATION);
    if inflated.max(0) as u64 > cap {
        issue(Issue::line(
            0,
            format!("decompresses to {inflated} bytes; the limit is {cap} ({MAX_INFLATION} × the file limit)"),
        ));
        return None;
    }
    let columns = meta.file_metadata().schema_descr().root_schema().get_fields().to_vec();
    if !check_schema(&columns, forced, issue) {
        return None;
    }
    let iter = match reader.get_row_iter(None) {
        Ok(i) => i,
        Err(e) => {
            issue(Issue::line(0, format!("is not a readable Parquet file: {e}")));
            return None;
        }
    };
    let mut out = Vec::with_capacity(rows);
    for (i, row) in iter.enumerate() {
        let n = i + 1;
        match row {
            Ok(r) => match object(&r) {
                Ok(v) => out.push((n, v)),
                Err((column, why)) => issue(Issue::field(n, &column, why)),
            },
            // A page that cannot be decoded ends the file's reading.
            Err(e) => {
                issue(Issue::line(n, format!("cannot be read: {e}")));
                return None;
            }
        }
    }
    Some(out)
}

/// Checks the type of each column the format reads: text fields must be string
/// columns (a label may also be an integer), chat columns lists. Issues name the column.
fn check_schema(columns: &[std::sync::Arc<Type>], forced: Option<Format>, issue: &mut dyn FnMut(Issue)) -> bool {
    let names: Vec<&str> = columns.iter().map(|t| t.name()).collect();
    let Some(format) = forced.or_else(|| Format::detect(|k| names.contains(&k))) else {
        issue(Issue::line(
            0,
            format!("columns {names:?} match no known format (prompt+completion, instruction+output, messages, conversations, text+label)"),
        ));
        return false;
    };
    let text_fields: &[&str] = match format {
        Format::PromptCompletion => &["prompt", "completion"],
        Format::Alpaca => &["instruction", "input", "output"],
        Format::Classification => &["text", "label"],
        Format::Chat | Format::ShareGpt => &[],
    };
    let mut ok = true;
    for t in columns {
        let name = t.name();
        let problem = if text_fields.contains(&name) {
            let integer_label = name == "label" && is_integer(t);
            let want = if name == "label" { "text or integers" } else { "text (a string column)" };
            (!is_string(t) && !integer_label).then(|| format!("holds {}; it must hold {want}", describe(t)))
        } else if matches!((format, name), (Format::Chat, "messages") | (Format::ShareGpt, "conversations")) {
            (t.is_primitive()).then(|| format!("holds {}; it must be a list of messages", describe(t)))
        } else {
            None
        };
        if let Some(why) = problem {
            issue(Issue::field(0, name, why));
            ok = false;
        }
    }
    ok
}

fn is_string(t: &Type) -> bool {
    t.is_primitive()
        && t.get_physical_type() == Physical::BYTE_ARRAY
        && (matches!(t.get_basic_info().logical_type_ref(), Some(LogicalType::String | LogicalType::Json))
            || t.get_basic_info().converted_type() == ConvertedType::UTF8)
}

fn is_integer(t: &Type) -> bool {
    t.is_primitive() && matches!(t.get_physical_type(), Physical::INT32 | Physical::INT64)
}

/// A column's type in words, for errors.
fn describe(t: &Type) -> String {
    if !t.is_primitive() {
        return "a nested group (a list or struct)".into();
    }
    match (t.get_physical_type(), t.get_basic_info().logical_type_ref()) {
        _ if is_string(t) => "strings".into(),
        (Physical::BYTE_ARRAY, _) => "binary values".into(),
        (Physical::BOOLEAN, _) => "booleans".into(),
        (Physical::INT32 | Physical::INT64 | Physical::INT96, Some(l)) => format!("{l:?} values"),
        (Physical::INT32 | Physical::INT64, None) => "integers".into(),
        (Physical::FLOAT | Physical::DOUBLE, _) => "floating-point numbers".into(),
        (p, _) => format!("{p} values"),
    }
}

/// A row as a JSON object; `Err((column, why))` for a value JSON cannot carry as text.
fn object(row: &Row) -> Result<Value, (String, String)> {
    let mut m = Map::new();
    for (name, f) in row.get_column_iter() {
        m.insert(name.clone(), json(f).map_err(|why| (name.clone(), why))?);
    }
    Ok(Value::Object(m))
}

fn json(f: &Field) -> Result<Value, String> {
    let num = |x: f64| serde_json::Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null);
    Ok(match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => (*v).into(),
        Field::Short(v) => (*v).into(),
        Field::Int(v) | Field::Date(v) | Field::TimeMillis(v) => (*v).into(),
        Field::Long(v) | Field::TimeMicros(v) | Field::TimestampMillis(v) | Field::TimestampMicros(v) => (*v).into(),
        Field::UByte(v) => (*v).into(),
        Field::UShort(v) => (*v).into(),
        Field::UInt(v) => (*v).into(),
        Field::ULong(v) => (*v).into(),
        Field::Float16(v) => num(f64::from(*v)),
        Field::Float(v) => num(f64::from(*v)),
        Field::Double(v) => num(*v),
        Field::Decimal(_) => return Err("holds a decimal; it must hold text".into()),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.into()),
            Err(e) => return Err(format!("holds bytes that are not UTF-8 (at byte {})", e.valid_up_to())),
        },
        Field::Group(row) => object(row).map_err(|(col, why)| format!("`{col}` {why}"))?,
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(json).collect::<Result<_, _>>()?),
        Field::MapInternal(map) => {
            let mut m = Map::new();
            for (k, v) in map.entries() {
                let key = match k {
                    Field::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                m.insert(key, json(v)?);
            }
            Value::Object(m)
        }
    })
}
