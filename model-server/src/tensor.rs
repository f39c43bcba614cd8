//! Dense tensors as the server moves them between the wire and ONNX Runtime: element types of the
//! Open Inference Protocol that Vigil serves, decoding and encoding of the protocol's raw
//! (little-endian bytes) and typed (`InferTensorContents`) forms, and concatenation / splitting
//! along the batch dimension for dynamic batching.
//!
//! Validation against a model's declared inputs lives in `service`; this module only checks that
//! a payload holds as many elements as its shape says.

use vigil_proto::inference::InferTensorContents;

pub use crate::datatype::DataType;

impl DataType {
    /// The ONNX Runtime element type with the same layout.
    pub fn to_ort(self) -> ort::value::TensorElementType {
        use ort::value::TensorElementType as T;
        match self {
            DataType::Fp32 => T::Float32,
            DataType::Fp64 => T::Float64,
            DataType::Int32 => T::Int32,
            DataType::Int64 => T::Int64,
        }
    }

    /// The served type matching an ONNX Runtime element type, if Vigil serves it.
    pub fn from_ort(ty: ort::value::TensorElementType) -> Option<Self> {
        use ort::value::TensorElementType as T;
        match ty {
            T::Float32 => Some(DataType::Fp32),
            T::Float64 => Some(DataType::Fp64),
            T::Int32 => Some(DataType::Int32),
            T::Int64 => Some(DataType::Int64),
            _ => None,
        }
    }
}

/// Elements of a tensor, flattened in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// `FP32` elements.
    Fp32(Vec<f32>),
    /// `FP64` elements.
    Fp64(Vec<f64>),
    /// `INT32` elements.
    Int32(Vec<i32>),
    /// `INT64` elements.
    Int64(Vec<i64>),
}

/// Applies `$body` to the vector inside a [`TensorData`] whatever its element type.
macro_rules! with_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
        }
    };
}

/// Rebuilds a [`TensorData`] of the same variant as `$data` from `$body`, which sees the vector as
/// `$v` and must return a vector of the same element type.
macro_rules! map_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Fp32($v) => TensorData::Fp32($body),
            TensorData::Fp64($v) => TensorData::Fp64($body),
            TensorData::Int32($v) => TensorData::Int32($body),
            TensorData::Int64($v) => TensorData::Int64($body),
        }
    };
}

impl TensorData {
    /// The element type.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_vec!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the raw form: `len` elements of `datatype`, little-endian, no padding.
    ///
    /// # Errors
    /// A message naming both sizes when `bytes` is not exactly `len` elements long.
    pub fn from_raw(datatype: DataType, bytes: &[u8], len: usize) -> Result<Self, String> {
        let want = len.saturating_mul(datatype.size());
        if bytes.len() != want {
            return Err(format!(
                "raw contents hold {} bytes, shape and datatype {datatype} need {want}",
                bytes.len()
            ));
        }
        fn decode<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
                .collect()
        }
        Ok(match datatype {
            DataType::Fp32 => TensorData::Fp32(decode(bytes, f32::from_le_bytes)),
            DataType::Fp64 => TensorData::Fp64(decode(bytes, f64::from_le_bytes)),
            DataType::Int32 => TensorData::Int32(decode(bytes, i32::from_le_bytes)),
            DataType::Int64 => TensorData::Int64(decode(bytes, i64::from_le_bytes)),
        })
    }

    /// Decodes the typed form: the repeated field of `contents` that carries `datatype`.
    ///
    /// # Errors
    /// A message naming the field when it does not hold exactly `len` elements.
    pub fn from_contents(
        datatype: DataType,
        contents: InferTensorContents,
        len: usize,
    ) -> Result<Self, String> {
        let (field, data) = match datatype {
            DataType::Fp32 => ("fp32_contents", TensorData::Fp32(contents.fp32_contents)),
            DataType::Fp64 => ("fp64_contents", TensorData::Fp64(contents.fp64_contents)),
            DataType::Int32 => ("int_contents", TensorData::Int32(contents.int_contents)),
            DataType::Int64 => ("int64_contents", TensorData::Int64(contents.int64_contents)),
        };
        if data.len() != len {
            return Err(format!(
                "contents.{field} holds {} elements, shape needs {len}",
                data.len()
            ));
        }
        Ok(data)
    }

    /// Encodes the raw form (little-endian).
    pub fn to_raw(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * self.datatype().size());
        with_vec!(self, v => for x in v { out.extend_from_slice(&x.to_le_bytes()) });
        out
    }

    /// Encodes the typed form.
    pub fn into_contents(self) -> InferTensorContents {
        let mut c = InferTensorContents::default();
        match self {
            TensorData::Fp32(v) => c.fp32_contents = v,
            TensorData::Fp64(v) => c.fp64_contents = v,
            TensorData::Int32(v) => c.int_contents = v,
            TensorData::Int64(v) => c.int64_contents = v,
        }
        c
    }
}

/// A dense tensor: shape plus row-major elements; `shape` has no `-1`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions; the first is the batch dimension for batched models.
    pub shape: Vec<i64>,
    /// Elements, `shape.iter().product()` of them.
    pub data: TensorData,
}

/// Number of elements of a shape whose dimensions are all non-negative; saturates at
/// `usize::MAX` (a size no payload can match) instead of overflowing.
pub fn element_count(shape: &[i64]) -> usize {
    shape.iter().fold(1usize, |n, &d| {
        n.saturating_mul(usize::try_from(d).unwrap_or(0))
    })
}

impl Tensor {
    /// Elements per batch row (product of all dimensions after the first).
    fn row_len(&self) -> usize {
        element_count(self.shape.get(1..).unwrap_or(&[]))
    }

    /// Concatenates tensors of the same element type and row shape along dimension 0.
    ///
    /// # Panics
    /// If `parts` is empty or mixes element types (callers validate both first).
    pub fn concat(parts: Vec<Tensor>) -> Tensor {
        let mut iter = parts.into_iter();
        let first = iter.next().expect("concat of at least one tensor");
        let mut shape = first.shape;
        let mut data = first.data;
        for part in iter {
            shape[0] += part.shape[0];
            match (&mut data, part.data) {
                (TensorData::Fp32(a), TensorData::Fp32(b)) => a.extend_from_slice(&b),
                (TensorData::Fp64(a), TensorData::Fp64(b)) => a.extend_from_slice(&b),
                (TensorData::Int32(a), TensorData::Int32(b)) => a.extend_from_slice(&b),
                (TensorData::Int64(a), TensorData::Int64(b)) => a.extend_from_slice(&b),
                _ => panic!("concat of tensors with different element types"),
            }
        }
        Tensor { shape, data }
    }

    /// Splits along dimension 0 into consecutive pieces of `rows[i]` rows each.
    ///
    /// # Panics
    /// If `rows` does not sum to `shape[0]`.
    pub fn split(self, rows: &[usize]) -> Vec<Tensor> {
        let row_len = self.row_len();
        let total: usize = rows.iter().sum();
        assert_eq!(
            i64::try_from(total).ok(),
            self.shape.first().copied(),
            "split rows must cover dimension 0"
        );
        let mut out = Vec::with_capacity(rows.len());
        let mut offset = 0;
        for &n in rows {
            let range = offset * row_len..(offset + n) * row_len;
            let mut shape = self.shape.clone();
            shape[0] = i64::try_from(n).expect("row count fits i64");
            out.push(Tensor {
                shape,
                data: map_vec!(&self.data, v => v[range.clone()].to_vec()),
            });
            offset += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip_keeps_every_type() {
        for data in [
            TensorData::Fp32(vec![1.5, -2.0, f32::MAX]),
            TensorData::Fp64(vec![1e-300, -0.0]),
            TensorData::Int32(vec![i32::MIN, 7]),
            TensorData::Int64(vec![i64::MAX, -1, 0]),
        ] {
            let raw = data.to_raw();
            let back = TensorData::from_raw(data.datatype(), &raw, data.len()).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn raw_of_wrong_length_is_rejected() {
        let err = TensorData::from_raw(DataType::Fp32, &[0u8; 7], 2).unwrap_err();
        assert!(err.contains("7 bytes") && err.contains("need 8"), "{err}");
    }

    #[test]
    fn contents_must_match_the_shape() {
        let contents = InferTensorContents {
            fp32_contents: vec![1.0, 2.0, 3.0],
            ..Default::default()
        };
        let err = TensorData::from_contents(DataType::Fp32, contents, 4).unwrap_err();
        assert!(err.contains("fp32_contents holds 3"), "{err}");
    }

    #[test]
    fn concat_then_split_restores_the_parts() {
        let a = Tensor {
            shape: vec![1, 2],
            data: TensorData::Fp32(vec![1.0, 2.0]),
        };
        let b = Tensor {
            shape: vec![2, 2],
            data: TensorData::Fp32(vec![3.0, 4.0, 5.0, 6.0]),
        };
        let joined = Tensor::concat(vec![a.clone(), b.clone()]);
        assert_eq!(joined.shape, vec![3, 2]);
        assert_eq!(joined.split(&[1, 2]), vec![a, b]);
    }

    #[test]
    fn absurd_shapes_do_not_overflow() {
        let n = element_count(&[i64::MAX, i64::MAX, 11]);
        assert_eq!(n, usize::MAX);
        assert!(TensorData::from_raw(DataType::Fp64, &[0u8; 16], n).is_err());
    }

    #[test]
    fn unsupported_datatypes_are_named() {
        let err = "BYTES".parse::<DataType>().unwrap_err();
        assert!(err.contains("`BYTES`"), "{err}");
    }
}
