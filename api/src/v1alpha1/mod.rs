//! Version `v1alpha1` of the `vigil.dev` API group.

mod anomaly_model;
mod common;
mod detection_rule;
mod detector;
mod savepoint;
mod stream_pipeline;

pub use anomaly_model::*;
pub use common::*;
pub use detection_rule::*;
pub use detector::*;
pub use savepoint::*;
pub use stream_pipeline::*;

/// The API group of every Vigil kind.
pub const GROUP: &str = "vigil.dev";
