use std::collections::{HashMap, HashSet};

use common::{
    amqp::RequestContext,
    protocol::{
        ApiError,
        messages::{
            AsUser, MAX_CONVERSATIONS_PAGE, MAX_SYNC_HEADS, SYNC_BODY_BYTES, SYNC_CONVERSATIONS_BEHIND,
            SYNC_MESSAGES_PER_CONVERSATION, SYNC_MESSAGES_TOTAL, SyncRequest, SyncResponse, json_string_len,
        },
    },
};

use super::{Shared, internal};
use crate::{domain::positive_id, store::Unlisted};

/// The resume contract: given the newest seq the client holds per conversation, return the user's most recently
/// active conversations (at most `MAX_CONVERSATIONS_PAGE`), then the others the client sent a head for that have
/// messages after it (up to `SYNC_CONVERSATIONS_BEHIND` with their entry, any more named in `truncated`), and
/// the messages it lacks, in order, at most `SYNC_MESSAGES_PER_CONVERSATION` per conversation and
/// `SYNC_MESSAGES_TOTAL` / `SYNC_BODY_BYTES` in all (the rest flagged `truncated`, for paging with
/// `getMessages after`: what was returned of a conversation is always a prefix of what it lacks, so the client's
/// new head is exact), and the conversations it sent a head for that the user is not a member of (`removed`).
/// Whatever replica or gateway a client reconnects to, the answer comes from the database, so nothing
/// acknowledged can be missed.
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
    let (mut conversations, more) =
        service.store.list(user_id, None, MAX_CONVERSATIONS_PAGE).await.map_err(internal)?;
    let listed: HashSet<i64> = conversations.iter().map(|e| e.conversation.id).collect();
    // Each once, in the order the client gave them (so the answer does not depend on the map's), with its lower seq.
    let mut seen = HashSet::with_capacity(heads.len());
    let unlisted: Vec<(i64, i64)> = request
        .heads
        .iter()
        .map(|head| head.conversation_id)
        .filter(|id| !listed.contains(id) && seen.insert(*id))
        .map(|id| (id, heads[&id]))
        .collect();
    let mut truncated = Vec::new();
    let removed = if more.is_none() {
        // The list holds every conversation of the user's: a head for any other is one they are not in.
        unlisted.into_iter().map(|(id, _)| id).collect()
    } else if unlisted.is_empty() {
        Vec::new()
    } else {
        // A user in more conversations than the list holds: a conversation the client holds can have fallen out
        // of it (others spoke since), and its news would never come. Those with messages after their head follow
        // the recent ones, the most recently active with their entry, any more in `truncated` only (the client
        // pages them); those the user is no longer in are named in `removed`, as the complete list implies them.
        let Unlisted { mut behind, removed } = service.store.unlisted(user_id, &unlisted).await.map_err(internal)?;
        let rest = behind.split_off(behind.len().min(SYNC_CONVERSATIONS_BEHIND as usize));
        conversations.extend(service.store.entries(user_id, &behind).await.map_err(internal)?);
        truncated.extend(rest);
        removed
    };
    let per = i64::from(SYNC_MESSAGES_PER_CONVERSATION);
    let mut budget = i64::from(SYNC_MESSAGES_TOTAL);
    let mut ranges = Vec::new();
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
    Ok(SyncResponse { conversations, messages, truncated, removed })
}
