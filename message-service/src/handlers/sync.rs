use std::collections::HashMap;

use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        messages::{
            AsUser, MAX_CONVERSATIONS_PAGE, MAX_SYNC_HEADS, SYNC_BODY_BYTES, SYNC_MESSAGES_PER_CONVERSATION,
            SYNC_MESSAGES_TOTAL, SyncRequest, SyncResponse, json_string_len,
        },
    },
};

use super::{Shared, internal};
use crate::domain::positive_id;

/// The resume contract: given the newest seq the client holds per conversation, return every conversation of the
/// user and the messages it lacks, in order, at most `SYNC_MESSAGES_PER_CONVERSATION` per conversation and
/// `SYNC_MESSAGES_TOTAL` / `SYNC_BODY_BYTES` in all (the rest flagged `truncated`, for paging with
/// `getMessages after`: what was returned of a conversation is always a prefix of what it lacks, so the client's
/// new head is exact). Whatever replica or gateway a client reconnects to, the answer comes from the database,
/// so nothing acknowledged can be missed.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn sync(
    service: Shared,
    request: AsUser<SyncRequest>,
    ctx: RequestContext,
) -> Result<SyncResponse, ApiError> {
    let AsUser { user_id, request } = request;
    if request.heads.len() > MAX_SYNC_HEADS {
        return Err(ApiError::validation(format!("at most {MAX_SYNC_HEADS} heads")));
    }
    if request.heads.iter().any(|h| h.seq < 0) {
        return Err(ApiError::validation("a seq cannot be negative"));
    }
    let mut heads = HashMap::with_capacity(request.heads.len());
    for head in &request.heads {
        let conversation_id = positive_id(head.conversation_id, "a head's conversationId")?;
        // Two heads for one conversation (a client merging what it holds from two places): the lower is the one
        // that misses nothing, since a message sent twice is harmless to a client that places by seq and a
        // message skipped is lost to it.
        heads.entry(conversation_id).and_modify(|seq: &mut i64| *seq = (*seq).min(head.seq)).or_insert(head.seq);
    }
    let (conversations, _) = service.store.list(user_id, None, MAX_CONVERSATIONS_PAGE).await.map_err(internal)?;
    let per = i64::from(SYNC_MESSAGES_PER_CONVERSATION);
    let mut budget = i64::from(SYNC_MESSAGES_TOTAL);
    let mut ranges = Vec::new();
    let mut truncated = Vec::new();
    for entry in &conversations {
        let conversation = &entry.conversation;
        // A conversation the client does not know yet: it gets the newest messages and pages back for older.
        let held = heads.get(&conversation.id).copied().unwrap_or((conversation.last_seq - per).max(0));
        let held = held.min(conversation.last_seq);
        if conversation.last_seq > held {
            let hi = conversation.last_seq.min(held + per.min(budget));
            if hi > held {
                ranges.push((conversation.id, held + 1, hi));
                budget -= hi - held;
            }
            if hi < conversation.last_seq {
                truncated.push(conversation.id);
            }
        }
    }
    let mut messages = service.store.ranges(&ranges).await.map_err(internal)?;
    // The byte budget, counted as JSON: keep a prefix of each conversation's missing messages, flag the rest.
    let mut bytes = 0;
    if let Some(cut) = messages.iter().position(|m| {
        bytes += json_string_len(&m.body);
        bytes > SYNC_BODY_BYTES
    }) {
        for message in &messages[cut..] {
            if !truncated.contains(&message.conversation_id) {
                truncated.push(message.conversation_id);
            }
        }
        messages.truncate(cut);
    }
    Ok(SyncResponse { conversations, messages, truncated })
}
