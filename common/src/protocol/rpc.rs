//! Typed RPC operations. Each operation names its routing key and its request and response types once, so the
//! client (`amqp::RpcClient::call::<Register>`) and the server (`amqp::RpcServer::handle::<Register>`) cannot
//! disagree about either.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::ApiError;

/// One RPC operation on the direct exchange.
pub trait Operation: Send + Sync + 'static {
    /// The routing key, exactly as the design names it (`register`, `sendMessage`, ...).
    const ROUTING_KEY: &'static str;
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// The body of every RPC reply: `{"ok": <response>}` or `{"err": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RpcReply<T> {
    Ok(T),
    Err(ApiError),
}

impl<T> From<Result<T, ApiError>> for RpcReply<T> {
    fn from(result: Result<T, ApiError>) -> Self {
        match result {
            Ok(value) => RpcReply::Ok(value),
            Err(error) => RpcReply::Err(error),
        }
    }
}

impl<T> From<RpcReply<T>> for Result<T, ApiError> {
    fn from(reply: RpcReply<T>) -> Self {
        match reply {
            RpcReply::Ok(value) => Ok(value),
            RpcReply::Err(error) => Err(error),
        }
    }
}

/// Declares an operation type: `operation!(Register, "register", RegisterRequest => AuthResponse);`
#[macro_export]
macro_rules! operation {
    ($(#[$meta:meta])* $name:ident, $key:literal, $req:ty => $resp:ty) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;
        impl $crate::protocol::rpc::Operation for $name {
            const ROUTING_KEY: &'static str = $key;
            type Request = $req;
            type Response = $resp;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn replies_are_tagged_ok_or_err() {
        let ok: RpcReply<u32> = RpcReply::Ok(7);
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":7}"#);
        let err: RpcReply<u32> = RpcReply::Err(ApiError::conflict("taken"));
        assert_eq!(serde_json::to_string(&err).unwrap(), r#"{"err":{"code":"conflict","message":"taken"}}"#);
        let back: RpcReply<u32> = serde_json::from_str(r#"{"err":{"code":"timeout","message":"x"}}"#).unwrap();
        assert_eq!(back, RpcReply::Err(ApiError::new(ErrorCode::Timeout, "x")));
    }
}
