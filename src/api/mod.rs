//! The edges: the gRPC API (tonic) over the query service. Generated
//! protobuf types stop here; everything inside speaks domain types.

pub mod convert;
pub mod error;
pub mod grpc;
