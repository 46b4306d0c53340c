//! The edges: the gRPC API (tonic) and the REST gateway (axum), both over
//! the same query service. Generated protobuf types and JSON shapes stop
//! here; everything inside speaks domain types.

pub mod auth;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod rest;
pub mod watch;
