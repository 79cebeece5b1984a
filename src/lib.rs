//! Squall: a durable task broker. This library crate holds the broker so that the
//! binary (`src/main.rs`) and the end-to-end tests share it.

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod histogram;
pub mod http;
pub mod model;
pub mod server;
pub mod store;
#[cfg(test)]
mod testing;
