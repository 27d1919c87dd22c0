//! The channel emulator: a message-aware gRPC proxy between UE and edge that fades, adds noise to and drops the activations it carries.
//!
//! Not built yet: this crate only reserves its place in the workspace. The networked issue
//! (UE, emulator, edge over gRPC) and the agent issue fill it in.
