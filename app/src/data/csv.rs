//! A small RFC 4180 CSV reader that keeps line and column numbers, so every error can
//! name where it is: unbalanced quotes, ragged rows.

use super::Issue;

/// One parsed row: the line it starts on and its fields with their 1-based columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line where the row starts.
    pub line: usize,
    /// Field values.
    pub fields: Vec<String>,
}

/// Splits `text` into rows. Quoted fields may hold commas, doubled quotes and newlines.
/// Returns the rows it could read and the problems found.
pub fn parse(text: &str) -> (Vec<Row>, Vec<Issue>) {
    let mut rows = Vec::new();
    let mut issues = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    let mut row_line = 1usize;
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut quoted = false; // inside quotes
    let mut quote_line = 0usize;
    let mut was_quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
                quote_line = line;
            }
            '"' => issues.push(Issue::at(line, fields.len() + 1, "stray quote inside an unquoted field")),
            ',' => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
                if !(fields.len() == 1 && fields[0].is_empty()) {
                    rows.push(Row { line: row_line, fields: std::mem::take(&mut fields) });
                }
                fields.clear();
                line += 1;
                row_line = line;
            }
            c => {
                if was_quoted && !c.is_whitespace() {
                    issues.push(Issue::at(line, fields.len() + 1, "text after a closing quote"));
                }
                field.push(c);
            }
        }
    }
    if quoted {
        issues.push(Issue::at(quote_line, fields.len() + 1, "unbalanced quote: the field opened here never closes"));
    } else if any && (!field.is_empty() || !fields.is_empty() || was_quoted) {
        fields.push(field);
        rows.push(Row { line: row_line, fields });
    }
    (rows, issues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_keep_commas_quotes_and_newlines() {
        let (rows, issues) = parse("a,b\n\"x, y\",\"say \"\"hi\"\"\"\n\"multi\nline\",z\r\n");
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].fields, vec!["x, y", "say \"hi\""]);
        assert_eq!(rows[2], Row { line: 3, fields: vec!["multi\nline".into(), "z".into()] });
    }

    #[test]
    fn unbalanced_quote_names_its_line() {
        let (_, issues) = parse("a,b\nok,fine\n\"open,never closed\nmore\n");
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].line, 3);
        assert!(issues[0].reason.contains("unbalanced quote"));
    }

    #[test]
    fn blank_lines_are_skipped_and_last_row_needs_no_newline() {
        let (rows, _) = parse("a,b\n\n1,2");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].line, 3);
    }
}
