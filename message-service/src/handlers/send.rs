use common::{
    amqp::RequestContext,
    protocol::{
        ApiError, ErrorCode, RpcReply,
        messages::{AsUser, Event, MAX_SEND_BATCH, Message, SendBatch, SendBatchResult, SendMessageRequest},
    },
};

use std::collections::HashMap;

use futures_util::{StreamExt, future::join_all, stream::FuturesOrdered};

use super::{Shared, internal};
use crate::{
    commit::{Send, Ticket},
    domain::{ClientMessageId, MessageBody, positive_id},
};

/// Stores a message (through the group commit) and returns it with its seq. Sending to a user rather than a
/// conversation finds or creates the direct conversation first.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, user_id = request.user_id), err(Debug, level = "info"))]
pub async fn send_message(
    service: Shared,
    request: AsUser<SendMessageRequest>,
    ctx: RequestContext,
) -> Result<Message, ApiError> {
    send_one(&service, request, &ctx).await
}

/// A gateway's batch of sends, all in the same group commit where they fit, **in each sender's order**: the
/// gateway puts one socket's sends in a batch in the order they arrived, and that is the order they must be stored
/// in. So the sends are resolved to their conversations concurrently (a `toUserId` send may need a database round
/// trip, the user-service, or even to create the direct conversation, while a `conversationId` send needs none), and
/// each is queued for the commit as soon as it and every earlier send **of the same sender** are resolved: one
/// user's slow first message to someone new holds back that user's later sends, never everyone else's. Each gets
/// its own answer; only when every one failed unexpectedly (the database is down, say) is the batch itself failed,
/// so the RPC server retries it — safe, because every send is idempotent.
#[tracing::instrument(skip_all, fields(request_id = %ctx.request_id, sends = batch.sends.len()), err(Debug, level = "info"))]
pub async fn send_messages(
    service: Shared,
    batch: SendBatch,
    ctx: RequestContext,
) -> Result<SendBatchResult, ApiError> {
    if batch.sends.len() > MAX_SEND_BATCH {
        return Err(ApiError::validation(format!("at most {MAX_SEND_BATCH} sends in one batch")));
    }
    let count = batch.sends.len();
    // Each sender's sends, with their places in the batch, in the batch's order.
    let mut by_sender: HashMap<i64, Vec<(usize, AsUser<SendMessageRequest>)>> = HashMap::new();
    for (place, send) in batch.sends.into_iter().enumerate() {
        by_sender.entry(send.user_id).or_default().push((place, send));
    }
    let queued = join_all(by_sender.into_values().map(|sends| queue_in_order(&service, sends, &ctx))).await;
    let mut tickets: Vec<Option<Result<Ticket, ApiError>>> = (0..count).map(|_| None).collect();
    for (place, ticket) in queued.into_iter().flatten() {
        tickets[place] = Some(ticket);
    }
    let results = join_all(tickets.into_iter().map(|ticket| async move {
        match ticket {
            Some(ticket) => ticket?.answer().await,
            None => Err(ApiError::internal()),
        }
    }))
    .await;
    if !results.is_empty() && results.iter().all(|r| matches!(r, Err(e) if e.code == ErrorCode::Internal)) {
        return Err(ApiError::internal());
    }
    Ok(SendBatchResult { results: results.into_iter().map(RpcReply::from).collect() })
}

/// Resolves one sender's sends concurrently and queues each for the commit once every earlier one is resolved.
async fn queue_in_order(
    service: &Shared,
    sends: Vec<(usize, AsUser<SendMessageRequest>)>,
    ctx: &RequestContext,
) -> Vec<(usize, Result<Ticket, ApiError>)> {
    let mut resolved: FuturesOrdered<_> = sends
        .into_iter()
        .map(|(place, request)| async move { (place, resolve(service, request, ctx).await) })
        .collect();
    let mut tickets = Vec::with_capacity(resolved.len());
    while let Some((place, send)) = resolved.next().await {
        tickets.push((
            place,
            match send {
                Ok(send) => service.committer.enqueue(send).await,
                Err(error) => Err(error),
            },
        ));
    }
    tickets
}

async fn send_one(
    service: &Shared,
    request: AsUser<SendMessageRequest>,
    ctx: &RequestContext,
) -> Result<Message, ApiError> {
    let send = resolve(service, request, ctx).await?;
    service.committer.send(send).await
}

/// A send checked and resolved to its conversation (finding or creating the direct conversation of a `toUserId`).
async fn resolve(
    service: &Shared,
    request: AsUser<SendMessageRequest>,
    ctx: &RequestContext,
) -> Result<Send, ApiError> {
    let AsUser { user_id, request } = request;
    let body = MessageBody::parse(request.body)?;
    let client_message_id = ClientMessageId::parse(request.client_message_id)?;
    let conversation_id = match (request.conversation_id, request.to_user_id) {
        (Some(conversation_id), None) => positive_id(conversation_id, "conversationId")?,
        (None, Some(to)) => direct_conversation(service, user_id, positive_id(to, "toUserId")?, ctx).await?,
        _ => return Err(ApiError::validation("give exactly one of conversationId and toUserId")),
    };
    Ok(Send { sender_id: user_id, conversation_id, client_message_id, body })
}

async fn direct_conversation(service: &Shared, from: i64, to: i64, ctx: &RequestContext) -> Result<i64, ApiError> {
    if from == to {
        return Err(ApiError::validation("you cannot send a direct message to yourself"));
    }
    if let Some(id) = service.store.find_direct(from, to).await.map_err(internal)? {
        return Ok(id);
    }
    service.ensure_users_exist(from, &[to], &ctx.request_id).await?;
    let (conversation, created) = service.store.direct(from, to).await.map_err(internal)?;
    if created {
        let recipients = conversation.members.clone();
        service.events.publish(vec![Event::Conversation { conversation: conversation.clone(), recipients }]).await;
    }
    Ok(conversation.id)
}
