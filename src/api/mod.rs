//! The edges: the gRPC API (tonic) and the REST gateway (axum), both over
//! the same query service. Generated protobuf types and JSON shapes stop
//! here; everything inside speaks domain types. The REST listener also
//! serves the operator's web console and the API docs ([`console`]).

pub mod auth;
pub mod console;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod rest;
pub mod revision;
pub mod watch;
