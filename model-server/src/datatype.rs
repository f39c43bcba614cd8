//! Element types of the Open Inference Protocol that Vigil serves, as named in the protocol's
//! `datatype` strings and in a model's `config.yaml`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Element type of a tensor, named as in the protocol's `datatype` strings.
///
/// Vigil serves the numeric types its models use; the protocol's other types (BOOL, UINT*, INT8,
/// INT16, FP16, BYTES) are rejected with a precise error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    /// 32-bit IEEE float (`FP32`).
    #[serde(rename = "FP32")]
    Fp32,
    /// 64-bit IEEE float (`FP64`).
    #[serde(rename = "FP64")]
    Fp64,
    /// 32-bit signed integer (`INT32`).
    #[serde(rename = "INT32")]
    Int32,
    /// 64-bit signed integer (`INT64`).
    #[serde(rename = "INT64")]
    Int64,
}

impl DataType {
    /// The protocol name (`"FP32"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
        }
    }

    /// Bytes per element in the raw form.
    pub fn size(self) -> usize {
        match self {
            DataType::Fp32 | DataType::Int32 => 4,
            DataType::Fp64 | DataType::Int64 => 8,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "FP32" => Ok(DataType::Fp32),
            "FP64" => Ok(DataType::Fp64),
            "INT32" => Ok(DataType::Int32),
            "INT64" => Ok(DataType::Int64),
            other => Err(format!(
                "unsupported datatype `{other}`, expected one of FP32, FP64, INT32, INT64"
            )),
        }
    }
}
