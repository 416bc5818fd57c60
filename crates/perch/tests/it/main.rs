//! Perch's integration tests: one binary (STYLE.md §6), one module per surface.

mod admin_grpc;
mod admin_rest;
mod cli;
mod device_path;
mod durability;
mod harness;
