//! The gateway: the only process browsers talk to. HTTP and WebSockets in, RabbitMQ RPC out, and the event
//! stream fanned back in to the sockets; it verifies tokens with the public key but holds no database connection
//! and cannot mint tokens.
//!
//! A tour: [`startup`] builds the router and runs it; [`routes`] holds one file per area of the REST API;
//! [`ws`] is the WebSocket endpoint and the hub that routes live events to sockets; [`auth`] is the
//! bearer-token extractor; [`error`] is the one place errors become HTTP statuses; [`fields`] refuses unknown
//! fields at the edge; [`validate`] bounds request sizes at the edge; [`state`] is what handlers share; [`config`] reads the environment.

pub mod auth;
pub mod config;
pub mod error;
pub mod fields;
pub mod request_id;
pub mod routes;
pub mod send_batcher;
pub mod serve;
pub mod startup;
pub mod state;
pub mod validate;
pub mod ws;
