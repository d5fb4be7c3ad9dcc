//! Typed columns of the rows our operators pass each other. A broken contract
//! between two of our operators is an internal error naming the column, never a
//! panicking downcast; the same getters read a batch and a struct column.

use arrow::array::{
    ArrayRef, AsArray, BinaryArray, FixedSizeListArray, ListArray, PrimitiveArray, RecordBatch,
    StringArray, StructArray,
};
use arrow::datatypes::{ArrowPrimitiveType, DataType};
use datafusion::common::{internal_datafusion_err, Result};

/// Rows whose columns are found by name: a batch, or a struct column.
pub(crate) trait NamedColumns {
    fn column_named(&self, name: &str) -> Option<&ArrayRef>;
}

impl NamedColumns for RecordBatch {
    fn column_named(&self, name: &str) -> Option<&ArrayRef> {
        self.column_by_name(name)
    }
}

impl NamedColumns for StructArray {
    fn column_named(&self, name: &str) -> Option<&ArrayRef> {
        self.column_by_name(name)
    }
}

/// Column `name` of `rows`, downcast by `cast` to what `what` describes.
fn typed<'a, A: ?Sized>(
    rows: &'a impl NamedColumns,
    name: &str,
    what: &str,
    cast: impl FnOnce(&'a ArrayRef) -> Option<&'a A>,
) -> Result<&'a A> {
    let column = rows
        .column_named(name)
        .ok_or_else(|| internal_datafusion_err!("rows lack column '{name}'"))?;
    cast(column).ok_or_else(|| internal_datafusion_err!("column '{name}' is not {what}"))
}

/// Column `name` of `rows` as a primitive array of `T`.
pub(crate) fn primitive<'a, T: ArrowPrimitiveType>(
    rows: &'a impl NamedColumns,
    name: &str,
) -> Result<&'a PrimitiveArray<T>> {
    typed(rows, name, &T::DATA_TYPE.to_string(), |c| {
        c.as_primitive_opt::<T>()
    })
}

/// Column `name` of `rows` as strings.
pub(crate) fn strings<'a>(rows: &'a impl NamedColumns, name: &str) -> Result<&'a StringArray> {
    typed(rows, name, "Utf8", |c| c.as_string_opt::<i32>())
}

/// Column `name` of `rows` as binary values.
pub(crate) fn binaries<'a>(rows: &'a impl NamedColumns, name: &str) -> Result<&'a BinaryArray> {
    typed(rows, name, "Binary", |c| c.as_binary_opt::<i32>())
}

/// Column `name` of `rows` as lists.
fn lists<'a>(rows: &'a impl NamedColumns, name: &str) -> Result<&'a ListArray> {
    typed(rows, name, "a list", |c| c.as_list_opt::<i32>())
}

/// Row `i` of the list column `name` of `rows`, as a struct array.
pub(crate) fn structs(rows: &impl NamedColumns, name: &str, i: usize) -> Result<StructArray> {
    let value = lists(rows, name)?.value(i);
    value
        .as_struct_opt()
        .cloned()
        .ok_or_else(|| internal_datafusion_err!("column '{name}' is not a list of structs"))
}

/// Column `name` of `rows` as vectors of `Float32`.
pub(crate) fn vectors<'a>(
    rows: &'a impl NamedColumns,
    name: &str,
) -> Result<&'a FixedSizeListArray> {
    typed(rows, name, "a list of Float32", |c| {
        c.as_fixed_size_list_opt()
            .filter(|l| l.value_type() == DataType::Float32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::UInt32Array;
    use arrow::datatypes::{Field, Schema, UInt32Type, UInt64Type};
    use std::sync::Arc;

    #[test]
    fn a_missing_or_mistyped_column_is_an_internal_error_naming_it() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt32, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(UInt32Array::from(vec![1, 2]))]).unwrap();
        assert_eq!(primitive::<UInt32Type>(&batch, "n").unwrap().len(), 2);
        let missing = strings(&batch, "s").unwrap_err().to_string();
        assert!(missing.contains("rows lack column 's'"), "{missing}");
        let wrong = primitive::<UInt64Type>(&batch, "n")
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("column 'n' is not UInt64"), "{wrong}");
        let as_struct = StructArray::from(batch);
        assert_eq!(primitive::<UInt32Type>(&as_struct, "n").unwrap().len(), 2);
    }
}
