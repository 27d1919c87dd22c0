//! The UE: tokenizes the prompt, runs the embedding and layers 0..k, streams the hidden state to the edge over gRPC and prints the tokens it gets back.
//!
//! Not built yet: this crate only reserves its place in the workspace. The networked issue
//! (UE, emulator, edge over gRPC) and the agent issue fill it in.
