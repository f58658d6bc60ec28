//! `GET /healthz`: the process is up. `GET /readyz`: it can serve (broker connected, the event subscription live,
//! and every service the gateway depends on has at least one replica consuming). Orchestrators restart on the
//! first and route on the second.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde::Serialize;

use common::amqp::topology::{OPERATIONS, Service};

use crate::state::AppState;

/// The services the gateway needs. Every one of their operations must have a consumer: a replica declares and
/// consumes its queues one after another, so checking a single operation would report ready too early.
/// The message-service is left out when `require_message_service` is off (tests of the user endpoints alone).
fn downstream(state: &AppState) -> &'static [Service] {
    if state.settings().require_message_service { &[Service::User, Service::Message] } else { &[Service::User] }
}

pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    broker: bool,
    /// The gateway's event queue is bound and consumed (live push works).
    events: bool,
    services: Vec<ServiceReadiness>,
}

#[derive(Serialize)]
struct ServiceReadiness {
    service: &'static str,
    /// The fewest consumers any of the service's operations has.
    consumers: Option<u32>,
}

pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let broker = state.broker().is_connected() && state.rpc().is_ready();
    let events = broker && state.events().is_live();
    let mut services = Vec::new();
    for service in downstream(&state) {
        let mut consumers = None;
        if broker {
            for (operation, _) in OPERATIONS.iter().filter(|(_, owner)| owner == service) {
                let count = state.rpc().consumer_count(operation).await;
                consumers = Some(count.unwrap_or(0).min(consumers.unwrap_or(u32::MAX)));
            }
        }
        services.push(ServiceReadiness { service: service.name(), consumers });
    }
    let ready = broker && events && services.iter().all(|s| s.consumers.unwrap_or(0) > 0);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready, broker, events, services }))
}
