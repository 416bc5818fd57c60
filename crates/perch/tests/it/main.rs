//! Perch's integration tests: one binary (STYLE.md §6), one module per surface.

mod admin_grpc;
mod admin_rest;
mod cli;
mod durability;
mod harness;
