//! The generated gRPC types of `splitinfer.v1`. No logic lives here: conversion into domain types
//! happens at the edge of each service (see `split-core`).

pub mod v1 {
    tonic::include_proto!("splitinfer.v1");

    /// Encoded descriptors of the schema, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("splitinfer_v1_descriptor");
}
