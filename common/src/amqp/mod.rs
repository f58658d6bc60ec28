//! RabbitMQ plumbing shared by every process: the topology ([`topology`]), the connection supervisor
//! ([`connection`]), the typed RPC client and server, and the event stream of committed messages.

pub mod connection;
pub mod events;
pub mod headers;
pub mod rpc_client;
pub mod rpc_server;
pub mod topology;

pub use connection::{Broker, Link, Session};
pub use events::{EventPublisher, EventSubscriber, Received, SubscriberOptions};
pub use rpc_client::{CallContext, RpcClient};
pub use rpc_server::{RequestContext, RpcServer};
pub use topology::Topology;
