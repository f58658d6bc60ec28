//! HTTP routes, one file per area.

pub mod conversations;
pub mod health;
pub mod users;
