//! One handler per RPC operation. Each checks the request (parse, don't validate: see [`crate::domain`]) and
//! membership before touching anything, and answers expected failures with their own error codes. Unexpected
//! failures are logged with their cause and answered `internal`, which the RPC server retries, then dead-letters.

mod conversations;
mod history;
mod send;
mod sync;

pub use conversations::{
    add_members, create_group, get_conversation, leave_conversation, list_conversations, mark_read, remove_member,
};
pub use history::get_messages;
pub use send::{send_message, send_messages};
pub use sync::sync;

use std::sync::Arc;

use common::{
    amqp::{CallContext, RpcClient},
    protocol::{
        ApiError,
        users::{ResolveUsers, ResolveUsersRequest},
    },
};

use crate::{commit::Committer, events::EventSink, store::Store};

/// What every handler shares.
#[derive(Debug)]
pub struct Service {
    pub store: Store,
    pub committer: Committer,
    pub events: EventSink,
    /// To ask the user-service whether users exist (the message-service never reads the users schema).
    pub users: RpcClient,
    pub rpc_timeout: std::time::Duration,
}

pub type Shared = Arc<Service>;

/// An unexpected failure: the cause goes to the log, the caller gets `internal`.
pub(crate) fn internal(error: anyhow::Error) -> ApiError {
    tracing::error!(error = format!("{error:#}"), "unexpected failure");
    ApiError::internal()
}

pub(crate) fn not_a_member() -> ApiError {
    ApiError::forbidden("you are not a member of that conversation")
}

impl Service {
    /// Checks that the acting user and every id in `ids` name existing users, asking the user-service in pages
    /// of 100, before a conversation is created or joined with them. The actor is asked too: a token outlives its
    /// account (deleted, or a database restored from before it), and such a token must not put a user id that
    /// exists nowhere into a conversation (`unauthorized`, as the WebSocket refuses it at `auth`).
    pub(crate) async fn ensure_users_exist(&self, actor: i64, ids: &[i64], request_id: &str) -> Result<(), ApiError> {
        let mut all = Vec::with_capacity(ids.len() + 1);
        all.push(actor);
        all.extend(ids.iter().copied().filter(|id| *id != actor));
        for chunk in all.chunks(common::protocol::users::MAX_USERS_PAGE as usize) {
            let ctx = CallContext::new(request_id, self.rpc_timeout);
            let found = self.users.call::<ResolveUsers>(&ResolveUsersRequest { ids: chunk.to_vec() }, &ctx).await?;
            if let Some(missing) = chunk.iter().find(|id| !found.iter().any(|u| u.id == **id)) {
                return Err(if *missing == actor {
                    ApiError::unauthorized("your account no longer exists")
                } else {
                    ApiError::not_found(format!("no user with id {missing}"))
                });
            }
        }
        Ok(())
    }
}
