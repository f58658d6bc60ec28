//! The AMQP headers Warren puts on requests, and reading them back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};

/// The gateway's request id, carried into every service's logs.
pub const REQUEST_ID: &str = "x-request-id";
/// When the caller stops waiting, in ms since the Unix epoch. A server drops a request it picks up after this
/// (whether it waited in the queue or in the consumer's prefetch buffer), unexecuted.
pub const DEADLINE: &str = "x-deadline-ms";
/// Which attempt this copy of a request is (absent on the first). The RPC server republishes a request with the
/// next number when an attempt fails or a replica died holding it (see `rpc_server`).
pub const ATTEMPT: &str = "x-warren-attempt";

pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub fn deadline_after(timeout: Duration) -> i64 {
    now_millis().saturating_add(timeout.as_millis() as i64)
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

pub fn as_i64(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

pub fn request_id(properties: &BasicProperties) -> Option<String> {
    match header(properties, REQUEST_ID)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

pub fn deadline(properties: &BasicProperties) -> Option<i64> {
    header(properties, DEADLINE).and_then(as_i64)
}

/// 1 for a first attempt, 2 for the first retry, ... (at least 1, whatever the header says).
pub fn attempt(properties: &BasicProperties) -> u32 {
    header(properties, ATTEMPT).and_then(as_i64).map_or(1, |n| u32::try_from(n.max(1)).unwrap_or(u32::MAX))
}

/// `properties` with the attempt header set to `attempt` (every other header and property kept).
pub fn with_attempt(properties: &BasicProperties, attempt: u32) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(attempt)));
    properties.clone().with_headers(headers)
}

pub fn request_headers(request_id: &str, deadline_ms: i64) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(REQUEST_ID.into(), AMQPValue::LongString(request_id.into()));
    headers.insert(DEADLINE.into(), AMQPValue::LongLongInt(deadline_ms));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_read_back() {
        let properties = BasicProperties::default().with_headers(request_headers("req-1", 42));
        assert_eq!(request_id(&properties).as_deref(), Some("req-1"));
        assert_eq!(deadline(&properties), Some(42));
        assert_eq!(attempt(&properties), 1);
    }

    #[test]
    fn the_attempt_header_is_set_and_read_back_and_the_rest_is_kept() {
        let first = BasicProperties::default()
            .with_headers(request_headers("req-1", 42))
            .with_correlation_id("7".into())
            .with_reply_to("replies".into());
        let third = with_attempt(&with_attempt(&first, 2), 3);
        assert_eq!(attempt(&third), 3);
        assert_eq!(request_id(&third).as_deref(), Some("req-1"));
        assert_eq!(deadline(&third), Some(42));
        assert_eq!(third.correlation_id().as_ref().map(|c| c.to_string()).as_deref(), Some("7"));
        assert_eq!(third.reply_to().as_ref().map(|c| c.to_string()).as_deref(), Some("replies"));
    }

    #[test]
    fn a_nonsense_attempt_header_counts_as_the_first_attempt() {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT.into(), AMQPValue::LongLongInt(-4));
        assert_eq!(attempt(&BasicProperties::default().with_headers(headers.clone())), 1);
        headers.insert(ATTEMPT.into(), AMQPValue::LongString("two".into()));
        assert_eq!(attempt(&BasicProperties::default().with_headers(headers)), 1);
    }
}
