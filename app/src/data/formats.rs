//! The row formats we accept and how each becomes a [`Record`]: equivalent content in any
//! format gives the same record.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Issue;
use crate::data::Record;
use crate::model::tokenizer::ChatMessage;

/// A row format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"prompt", "completion"}`
    PromptCompletion,
    /// Alpaca `{"instruction", "input", "output"}` (input optional)
    Alpaca,
    /// `{"messages": [{"role", "content"}]}`
    Chat,
    /// ShareGPT `{"conversations": [{"from", "value"}]}`
    ShareGpt,
    /// `{"text", "label"}`
    Classification,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 5] =
        [Format::PromptCompletion, Format::Alpaca, Format::Chat, Format::ShareGpt, Format::Classification];

    /// A short name for messages and flags.
    pub fn name(self) -> &'static str {
        match self {
            Format::PromptCompletion => "prompt/completion",
            Format::Alpaca => "alpaca",
            Format::Chat => "chat",
            Format::ShareGpt => "sharegpt",
            Format::Classification => "text/label",
        }
    }

    /// Parses a flag value (`prompt-completion`, `alpaca`, `chat`, `sharegpt`, `text-label`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().replace(['_', '/'], "-").as_str() {
            "prompt-completion" | "prompt" => Format::PromptCompletion,
            "alpaca" => Format::Alpaca,
            "chat" | "messages" => Format::Chat,
            "sharegpt" | "conversations" => Format::ShareGpt,
            "text-label" | "classification" => Format::Classification,
            _ => return None,
        })
    }

    /// Recognises the format from the keys present.
    pub fn detect(has: impl Fn(&str) -> bool) -> Option<Self> {
        if has("messages") {
            Some(Format::Chat)
        } else if has("conversations") {
            Some(Format::ShareGpt)
        } else if has("instruction") && has("output") {
            Some(Format::Alpaca)
        } else if has("prompt") && has("completion") {
            Some(Format::PromptCompletion)
        } else if has("text") && has("label") {
            Some(Format::Classification)
        } else {
            None
        }
    }

    /// The columns a CSV file of this format needs (chat formats cannot be CSV).
    pub fn csv_columns(self) -> Option<&'static [&'static str]> {
        match self {
            Format::PromptCompletion => Some(&["prompt", "completion"]),
            Format::Alpaca => Some(&["instruction", "output"]),
            Format::Classification => Some(&["text", "label"]),
            Format::Chat | Format::ShareGpt => None,
        }
    }
}

/// A row's fields, by name, from JSON (lines, arrays, Parquet rows) or CSV.
pub trait Fields {
    /// The raw value of `name`: `Ok(None)` if absent; `Err` if present but not text.
    fn text(&self, name: &str) -> Result<Option<String>, String>;
    /// The JSON value of `name`, for chat lists (CSV rows have none).
    fn json(&self, name: &str) -> Option<&Value>;
}

impl Fields for serde_json::Map<String, Value> {
    fn text(&self, name: &str) -> Result<Option<String>, String> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if name == "label" && n.is_i64() => Ok(Some(n.to_string())),
            Some(other) => Err(format!("must be a string, found {}", json_kind(other))),
        }
    }
    fn json(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// A CSV row: header names with values.
pub struct CsvFields<'a> {
    /// Lower-cased header names.
    pub header: &'a [String],
    /// The row's values.
    pub values: &'a [String],
}

impl Fields for CsvFields<'_> {
    fn text(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.header.iter().position(|h| h == name).map(|i| self.values[i].clone()))
    }
    fn json(&self, _: &str) -> Option<&Value> {
        None
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Reads one row in `format`. `line` is only used in issues.
pub fn extract(format: Format, row: &dyn Fields, line: usize) -> Result<Record, Issue> {
    let need = |name: &str| -> Result<String, Issue> {
        match row.text(name) {
            Err(why) => Err(Issue::field(line, name, why)),
            Ok(None) if matches!(row.json(name), Some(Value::Null)) => Err(Issue::field(line, name, "is null".into())),
            Ok(None) => Err(Issue::field(line, name, "is missing".into())),
            Ok(Some(s)) if s.trim().is_empty() => Err(Issue::field(line, name, "is empty".into())),
            Ok(Some(s)) => Ok(s),
        }
    };
    match format {
        Format::PromptCompletion => Ok(Record::new(need("prompt")?, need("completion")?)),
        Format::Classification => Ok(Record::new(need("text")?, need("label")?.trim().to_string())),
        Format::Alpaca => {
            let instruction = need("instruction")?;
            let input = row.text("input").map_err(|why| Issue::field(line, "input", why))?.unwrap_or_default();
            let prompt = if input.trim().is_empty() { instruction } else { format!("{instruction}\n\n{input}") };
            Ok(Record::new(prompt, need("output")?))
        }
        Format::Chat | Format::ShareGpt => {
            let (key, role_key, text_key) = if format == Format::Chat {
                ("messages", "role", "content")
            } else {
                ("conversations", "from", "value")
            };
            let list = match row.json(key) {
                Some(Value::Array(a)) => a,
                Some(other) => {
                    return Err(Issue::field(line, key, format!("must be a list, found {}", json_kind(other))))
                }
                None => return Err(Issue::field(line, key, "is missing".into())),
            };
            let mut msgs = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                let field = format!("{key}[{i}]");
                let obj = m
                    .as_object()
                    .ok_or_else(|| Issue::field(line, &field, format!("must be an object, found {}", json_kind(m))))?;
                let role = match obj.get(role_key) {
                    Some(Value::String(r)) => r.as_str(),
                    _ => {
                        return Err(Issue::field(
                            line,
                            &format!("{field}.{role_key}"),
                            "is missing or not a string".into(),
                        ))
                    }
                };
                let role = match (format, role) {
                    (_, "system") => "system",
                    (Format::Chat, "user") | (Format::ShareGpt, "human" | "user") => "user",
                    (Format::Chat, "assistant") | (Format::ShareGpt, "gpt" | "assistant") => "assistant",
                    (_, other) => {
                        return Err(Issue::field(
                            line,
                            &format!("{field}.{role_key}"),
                            format!("unknown role `{other}`"),
                        ));
                    }
                };
                let content = match obj.get(text_key) {
                    Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
                    Some(Value::String(_)) => {
                        return Err(Issue::field(line, &format!("{field}.{text_key}"), "is empty".into()))
                    }
                    Some(other) => {
                        return Err(Issue::field(
                            line,
                            &format!("{field}.{text_key}"),
                            format!("must be a string, found {}", json_kind(other)),
                        ))
                    }
                    None => return Err(Issue::field(line, &format!("{field}.{text_key}"), "is missing".into())),
                };
                msgs.push(ChatMessage::new(role, content));
            }
            if msgs.iter().skip(1).any(|m| m.role == "system") {
                return Err(Issue::field(line, key, "a system message may only come first".into()));
            }
            let n = msgs.len();
            if n < 2 || msgs[n - 1].role != "assistant" || msgs[n - 2].role != "user" {
                return Err(Issue::field(
                    line,
                    key,
                    "must end with a user message followed by an assistant reply".into(),
                ));
            }
            let completion = msgs.pop().expect("checked length").content;
            let prompt = msgs.pop().expect("checked length").content;
            Ok(Record { prompt, completion, history: msgs })
        }
    }
}
