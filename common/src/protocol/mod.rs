//! The contract between Warren's processes and its clients: RPC requests and replies between the gateway and the
//! services, and (later) the WebSocket frames between browsers and the gateway. One file per area; every type here
//! is serialised as JSON and the TypeScript the web app uses is generated from it (`make types`).

pub mod error;
pub mod messages;
pub mod rpc;
pub mod users;
pub mod ws;

pub use error::{ApiError, ErrorCode};
pub use rpc::{Operation, RpcReply};
