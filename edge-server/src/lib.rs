//! The edge server: many UE sessions at once, each with the KV caches of layers k..L, the head and sampling.
//!
//! Not built yet: this crate only reserves its place in the workspace. The networked issue
//! (UE, emulator, edge over gRPC) and the agent issue fill it in.
