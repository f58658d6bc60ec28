//! The AMQP headers Warren puts on requests, and reading them back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};

/// The gateway's request id, carried into every service's logs.
pub const REQUEST_ID: &str = "x-request-id";
/// When the caller stops waiting, in ms since the Unix epoch. A server drops a request it picks up after this:
/// queue TTL (`expiration`) cannot cover a message already prefetched into a consumer's buffer.
pub const DEADLINE: &str = "x-deadline-ms";
/// Set by quorum queues on redelivery: how many times the message was delivered before.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

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

/// 1 for a first delivery, 2 for the first redelivery, ...
pub fn attempt(properties: &BasicProperties) -> u32 {
    header(properties, DELIVERY_COUNT)
        .and_then(as_i64)
        .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX).saturating_add(1))
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
    fn the_attempt_counts_from_the_quorum_queue_delivery_count() {
        let mut headers = FieldTable::default();
        headers.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(2));
        assert_eq!(attempt(&BasicProperties::default().with_headers(headers)), 3);
    }
}
