//! The contract between Warren's processes: protocol types, RabbitMQ plumbing, configuration and telemetry.
//! No business logic lives here.
//!
//! A tour: [`protocol`] says what travels (RPC requests/replies, WebSocket frames, errors); [`amqp`] says how
//! (topology, connection supervisor, RPC client and server); [`config`] and [`telemetry`] are the shared set-up
//! every binary does first; [`auth`] verifies (and, in the user-service, signs) the tokens.

pub mod amqp;
pub mod auth;
pub mod config;
pub mod protocol;
pub mod shutdown;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
