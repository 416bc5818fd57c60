//! Human output: aligned tables for lists, `key: value` lines for single resources.

use serde_json::Value;

use super::Format;

/// Prints a list: pretty JSON with `--format json`, else one table row per item.
pub fn print_list(
    format: Format,
    items: &[Value],
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(items)?),
        Format::Table => table(headers, &items.iter().map(row).collect::<Vec<_>>()),
    }
    Ok(())
}

/// Prints one resource: pretty JSON with `--format json`, else `key: value` lines.
pub fn print_one(format: Format, value: &Value) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Format::Table => describe(value),
    }
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints a JSON object as `path: value` lines (nested keys dotted, list items indexed).
pub fn describe(value: &Value) {
    fn walk(prefix: &str, value: &Value) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v);
                }
            }
            Value::String(s) if s.contains('\n') => {
                println!("{prefix}: |");
                for line in s.lines() {
                    println!("  {line}");
                }
            }
            Value::String(s) => println!("{prefix}: {s}"),
            other => println!("{prefix}: {other}"),
        }
    }
    walk("", value);
}

/// A JSON field as a table cell.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
