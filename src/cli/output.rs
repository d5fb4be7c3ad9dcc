//! Printing results: a table for people, CSV or JSON lines for programs.

use std::io::Write;
use std::str::FromStr;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::util::pretty::pretty_format_batches;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Boxed text table (the default).
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row (JSON lines).
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown format '{other}' (expected table, csv or json)"
            )),
        }
    }
}

/// Writes `batches` (a statement's result) to `out`. Statements without result
/// columns (DDL, `SET`) print nothing; an empty result prints its header.
pub(crate) fn print(
    batches: &[RecordBatch],
    format: Format,
    out: &mut impl Write,
) -> Result<(), String> {
    let Some(first) = batches.first() else {
        return Ok(());
    };
    if first.num_columns() == 0 {
        return Ok(());
    }
    let failed = |e: &dyn std::fmt::Display| format!("cannot print the result: {e}");
    match format {
        Format::Table => {
            let table = pretty_format_batches(batches).map_err(|e| failed(&e))?;
            writeln!(out, "{table}").map_err(|e| failed(&e))
        }
        Format::Csv => {
            let mut writer = WriterBuilder::new().with_header(true).build(&mut *out);
            for b in batches {
                writer.write(b).map_err(|e| failed(&e))?;
            }
            Ok(())
        }
        Format::Json => {
            let mut writer = LineDelimitedWriter::new(&mut *out);
            writer
                .write_batches(&batches.iter().collect::<Vec<_>>())
                .map_err(|e| failed(&e))?;
            writer.finish().map_err(|e| failed(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float32Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("shard_id", DataType::Utf8, false),
            Field::new("distance", DataType::Float32, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b,c"])),
                Arc::new(Float32Array::from(vec![0.5, 1.0])),
            ],
        )
        .unwrap()
    }

    fn printed(format: Format) -> String {
        let mut out = Vec::new();
        print(&[batch()], format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn prints_each_format() {
        assert!(printed(Format::Table).contains("| shard_id | distance |"));
        assert_eq!(
            printed(Format::Csv),
            "shard_id,distance\na,0.5\n\"b,c\",1.0\n"
        );
        assert_eq!(
            printed(Format::Json),
            "{\"shard_id\":\"a\",\"distance\":0.5}\n{\"shard_id\":\"b,c\",\"distance\":1.0}\n"
        );
        assert_eq!("csv".parse(), Ok(Format::Csv));
        assert!("xml"
            .parse::<Format>()
            .unwrap_err()
            .contains("table, csv or json"));
    }
}
