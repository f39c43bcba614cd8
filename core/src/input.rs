//! Bounded input files for `vigil score` and `vigil replay`: NAB-format CSV (`timestamp,value`,
//! any numeric columns) and JSON Lines. Each row becomes the JSON event the pipeline decodes,
//! so files go through the same decoder as Kafka records.

use std::path::Path;

/// Failure to read an input file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A CSV row is malformed.
    #[error("{path}: {source}")]
    Csv {
        /// The file.
        path: String,
        /// The cause, with the row.
        #[source]
        source: csv::Error,
    },
    /// The extension is neither `.csv` nor `.jsonl`/`.json`.
    #[error("{0}: unsupported input format, expected .csv or .jsonl")]
    Format(String),
}

/// One input row: its original text fields (for CSV) and the JSON event built from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// CSV cells in column order (empty for JSONL).
    pub cells: Vec<String>,
    /// The event as JSON bytes.
    pub json: Vec<u8>,
}

/// Reads a `.csv` or `.jsonl` file into rows, in file order.
///
/// CSV columns become JSON members named after the header: cells that parse as numbers become
/// numbers, others strings. JSONL lines are taken as they are (blank lines skipped).
///
/// # Errors
/// [`InputError`] naming the file and, for CSV, the row.
pub fn read_rows(path: &Path) -> Result<(Vec<String>, Vec<Row>), InputError> {
    let name = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "csv" => {
            let mut r = csv::Reader::from_path(path).map_err(|source| InputError::Csv {
                path: name.clone(),
                source,
            })?;
            let header: Vec<String> = r
                .headers()
                .map_err(|source| InputError::Csv {
                    path: name.clone(),
                    source,
                })?
                .iter()
                .map(str::to_string)
                .collect();
            let mut rows = Vec::new();
            for rec in r.records() {
                let rec = rec.map_err(|source| InputError::Csv {
                    path: name.clone(),
                    source,
                })?;
                let mut obj = serde_json::Map::with_capacity(header.len());
                for (h, cell) in header.iter().zip(rec.iter()) {
                    let v = match cell.trim().parse::<f64>() {
                        Ok(x) if x.is_finite() => serde_json::Value::from(x),
                        _ => serde_json::Value::from(cell),
                    };
                    obj.insert(h.clone(), v);
                }
                rows.push(Row {
                    cells: rec.iter().map(str::to_string).collect(),
                    json: serde_json::to_vec(&obj).expect("a JSON map serialises"),
                });
            }
            Ok((header, rows))
        }
        "jsonl" | "json" | "ndjson" => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| InputError::Read { path: name, source })?;
            let rows = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| Row {
                    cells: Vec::new(),
                    json: l.as_bytes().to_vec(),
                })
                .collect();
            Ok((Vec::new(), rows))
        }
        _ => Err(InputError::Format(name)),
    }
}
