//! Integration tests of the model server: real ONNX Runtime (`ORT_DYLIB_PATH`), real gRPC over
//! loopback, the committed reference models. One test binary, one module per concern.

mod bad_input;
mod batching;
mod common;
mod conformance;
mod lifecycle;
