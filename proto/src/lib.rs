//! The generated gRPC types of `splitinfer.v1`, and the reflection services every server adds. No
//! logic lives here: conversion into domain types happens at the edge of each service (see
//! `split-core`).

pub mod v1 {
    tonic::include_proto!("splitinfer.v1");

    /// Encoded descriptors of the schema, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("splitinfer_v1_descriptor");
}

/// gRPC server reflection over this schema and the standard health service, in both protocol
/// versions: `v1`, and the older `v1alpha` that grpcurl before 1.8.8 (and other clients still in
/// use) speak. Every splitinfer server adds both, so a client needs no .proto files at hand.
///
/// Only `services` (fully qualified, e.g. `splitinfer.v1.Edge`), the health service and
/// reflection itself are listed: a server advertises what it answers, nothing it would refuse
/// with UNIMPLEMENTED.
pub fn reflection_services(services: &[&str]) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
