//! Turning Arrow vector columns into dense `f32` rows, with clear errors for
//! rows the index cannot hold.

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, LargeListArray, ListArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type};

use crate::error::{IndexError, Result};

/// Whether `dt` is a vector column this crate accepts.
pub(crate) fn is_vector_type(dt: &DataType) -> bool {
    match dt {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            matches!(f.data_type(), DataType::Float32 | DataType::Float64)
        }
        _ => false,
    }
}

/// Appends every row of `array` to `out` as `dim` floats. `column` names the
/// column and `row_label(i)` the row in errors (for example by its row id).
pub(crate) fn append_vectors(
    array: &ArrayRef,
    dim: usize,
    column: &str,
    row_label: &dyn Fn(usize) -> String,
    out: &mut Vec<f32>,
) -> Result<()> {
    let bad = |i: usize, why: String| {
        IndexError::InvalidInput(format!("column '{column}', {}: {why}", row_label(i)))
    };
    let (values, offsets): (&ArrayRef, Vec<(usize, usize)>) = match array.data_type() {
        DataType::FixedSizeList(_, n) => {
            let a: &FixedSizeListArray = array.as_fixed_size_list();
            let n = *n as usize;
            let offs = (0..a.len()).map(|i| ((a.offset() + i) * n, n)).collect();
            (a.values(), offs)
        }
        DataType::List(_) => {
            let a: &ListArray = array.as_list();
            let o = a.value_offsets();
            (a.values(), (0..a.len()).map(|i| (o[i] as usize, (o[i + 1] - o[i]) as usize)).collect())
        }
        DataType::LargeList(_) => {
            let a: &LargeListArray = array.as_list();
            let o = a.value_offsets();
            (a.values(), (0..a.len()).map(|i| (o[i] as usize, (o[i + 1] - o[i]) as usize)).collect())
        }
        other => {
            return Err(IndexError::InvalidInput(format!(
                "column '{column}' has type {other}; expected a FixedSizeList or List of Float32 or Float64"
            )))
        }
    };
    out.reserve(offsets.len() * dim);
    for (i, &(start, len)) in offsets.iter().enumerate() {
        if array.is_null(i) {
            return Err(bad(i, "vector is NULL".into()));
        }
        if len != dim {
            return Err(bad(
                i,
                format!("vector has dimension {len}, expected {dim}"),
            ));
        }
        if values.null_count() > 0 && (start..start + len).any(|j| values.is_null(j)) {
            return Err(bad(i, "vector has a NULL element".into()));
        }
        let before = out.len();
        match values.data_type() {
            DataType::Float32 => out.extend_from_slice(
                &values.as_primitive::<Float32Type>().values()[start..start + len],
            ),
            DataType::Float64 => out.extend(
                values.as_primitive::<Float64Type>().values()[start..start + len]
                    .iter()
                    .map(|&x| x as f32),
            ),
            other => {
                return Err(IndexError::InvalidInput(format!(
                    "column '{column}' has elements of type {other}; expected Float32 or Float64"
                )))
            }
        }
        if out[before..].iter().any(|x| !x.is_finite()) {
            return Err(bad(i, "vector contains NaN or infinity".into()));
        }
    }
    Ok(())
}

/// The dimension of the first non-null row, for List columns whose type does not say.
pub(crate) fn first_dim(array: &ArrayRef) -> Option<usize> {
    match array.data_type() {
        DataType::FixedSizeList(_, n) => Some(*n as usize),
        DataType::List(_) => {
            let a = array.as_list::<i32>();
            (0..a.len())
                .find(|&i| a.is_valid(i))
                .map(|i| a.value_length(i) as usize)
        }
        DataType::LargeList(_) => {
            let a = array.as_list::<i64>();
            (0..a.len())
                .find(|&i| a.is_valid(i))
                .map(|i| a.value_length(i) as usize)
        }
        _ => None,
    }
}
