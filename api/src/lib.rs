//! The gateway: the only process browsers talk to. HTTP and (soon) WebSockets in, RabbitMQ RPC out; it verifies
//! tokens with the public key but holds no database connection and cannot mint tokens.
//!
//! A tour: [`startup`] builds the router and runs it; [`routes`] holds one file per area of the REST API;
//! [`auth`] is the bearer-token extractor; [`error`] is the one place errors become HTTP statuses;
//! [`state`] is what handlers share; [`config`] reads the environment.

pub mod auth;
pub mod config;
pub mod error;
pub mod request_id;
pub mod routes;
pub mod startup;
pub mod state;
