//! The agent: watches channel statistics, runs a split policy and pushes split decisions to the UE and the edge.
//!
//! Not built yet: this crate only reserves its place in the workspace. The networked issue
//! (UE, emulator, edge over gRPC) and the agent issue fill it in.
