-- A message's time comes from the database's clock, read after the batch holds its conversations' locks, and
-- never before the conversation's last activity: within a conversation `sent_at` grows with `seq`, and
-- `last_activity_at` never moves back. Before, the time was the replica's clock read before the batch queued for
-- the locks, so a batch that waited behind another (a second replica's, a member add) stored an earlier time after
-- a later one, and two replicas whose clocks disagreed interleaved their times in one conversation. One clock for
-- every replica is also the clock that stamps the conversations' `created_at`.
--
-- `p_at` stays in the signature, unused, so replicas of the releases before call this function as they are (they
-- read each message's time from the rows, as this release does) and a rollback needs no schema change. The rest of
-- the function is migration 4's (message-service/src/commit.rs explains the steps).
CREATE OR REPLACE FUNCTION messages.commit_sends(
    p_conversation_ids BIGINT[],
    p_sender_ids       BIGINT[],
    p_client_ids       TEXT[],
    p_bodies           TEXT[],
    p_at               TIMESTAMPTZ
) RETURNS TABLE (
    ord               BIGINT,
    fresh             BOOLEAN,
    conversation_id   BIGINT,
    seq               BIGINT,
    sender_id         BIGINT,
    client_message_id TEXT,
    body              TEXT,
    sent_at           TIMESTAMPTZ,
    recipients        BIGINT[]
)
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    v_now TIMESTAMPTZ;
BEGIN
    -- 1. Lock the batch's conversations in id order, so two batches cannot deadlock.
    PERFORM 1 FROM messages.conversations c WHERE c.id = ANY (p_conversation_ids) ORDER BY c.id FOR UPDATE;
    -- The batch's time, read now that no other writer of these conversations can commit before it.
    v_now := clock_timestamp();

    -- 2.–4. One statement, with its snapshot taken now that the locks are held.
    RETURN QUERY
    WITH input AS (
        SELECT t.ord, t.conversation_id, t.sender_id, t.client_message_id, t.body
          FROM unnest(p_conversation_ids, p_sender_ids, p_client_ids, p_bodies)
               WITH ORDINALITY AS t (conversation_id, sender_id, client_message_id, body, ord)
    ), member_lists AS (
        -- 2. The members: who may send, and who receives.
        SELECT m.conversation_id, array_agg(m.user_id ORDER BY m.user_id) AS ids
          FROM messages.members m
         WHERE m.conversation_id = ANY (p_conversation_ids)
         GROUP BY m.conversation_id
    ), allowed AS (
        SELECT i.ord, i.conversation_id, i.sender_id, i.client_message_id, i.body
          FROM input i
          JOIN member_lists l ON l.conversation_id = i.conversation_id
         WHERE i.sender_id = ANY (l.ids)
    ), stored AS (
        -- 3. Sends stored before (a retry, a redelivery, a second device racing the first), before any seq is
        --    allocated, so a repeat leaves no hole. Looked up for every send, members or not: a sender removed
        --    after their message was stored still gets it back when they retry it (below).
        SELECT m.conversation_id, m.seq, m.sender_id, m.client_message_id, m.body, m.sent_at
          FROM messages.messages m
         WHERE (m.sender_id, m.client_message_id) IN (SELECT i.sender_id, i.client_message_id FROM input i)
    ), firsts AS (
        -- The first allowed send of each (sender, client id) that is not stored yet becomes a new message.
        SELECT DISTINCT ON (a.sender_id, a.client_message_id)
               a.ord, a.conversation_id, a.sender_id, a.client_message_id, a.body
          FROM allowed a
         WHERE NOT EXISTS (
                   SELECT 1 FROM stored s
                    WHERE s.sender_id = a.sender_id AND s.client_message_id = a.client_message_id)
         ORDER BY a.sender_id, a.client_message_id, a.ord
    ), numbered AS (
        -- 4. Seqs from each conversation's last_seq, in arrival order.
        --    Each conversation's time is the batch's, or its last activity if that is later (a clock that went
        --    back, or activity stamped by a replica of the releases before), so it never moves back.
        SELECT f.ord, f.conversation_id,
               c.last_seq + row_number() OVER (PARTITION BY f.conversation_id ORDER BY f.ord) AS seq,
               f.sender_id, f.client_message_id, f.body, greatest(v_now, c.last_activity_at) AS message_at
          FROM firsts f
          JOIN messages.conversations c ON c.id = f.conversation_id
    ), inserted AS (
        INSERT INTO messages.messages (conversation_id, seq, sender_id, client_message_id, body, sent_at)
        SELECT n.conversation_id, n.seq, n.sender_id, n.client_message_id, n.body, n.message_at FROM numbered n
    ), advanced AS (
        UPDATE messages.conversations c
           SET last_seq = v.seq, last_activity_at = v.message_at
          FROM (SELECT n.conversation_id, max(n.seq) AS seq, max(n.message_at) AS message_at
                  FROM numbered n GROUP BY n.conversation_id) v
         WHERE c.id = v.conversation_id
    ), read_positions AS (
        -- What you sent, you have read (on every device).
        UPDATE messages.members m
           SET read_seq = GREATEST(m.read_seq, v.seq)
          FROM (SELECT n.conversation_id, n.sender_id, max(n.seq) AS seq
                  FROM numbered n GROUP BY n.conversation_id, n.sender_id) v
         WHERE m.conversation_id = v.conversation_id AND m.user_id = v.sender_id
    )
    SELECT i.ord,
           coalesce(n.ord = i.ord, false),
           coalesce(s.conversation_id, n.conversation_id),
           coalesce(s.seq, n.seq),
           coalesce(s.sender_id, n.sender_id),
           coalesce(s.client_message_id, n.client_message_id),
           coalesce(s.body, n.body),
           coalesce(s.sent_at, n.message_at),
           l.ids
      FROM input i
      LEFT JOIN allowed a ON a.ord = i.ord
      LEFT JOIN stored s
             ON s.sender_id = i.sender_id AND s.client_message_id = i.client_message_id
            -- A member's send gets whatever its id names (a repeat, or another message: refused as a conflict by
            -- the caller); a non-member's only the very message it repeats, in that conversation.
            AND (a.ord IS NOT NULL OR s.conversation_id = i.conversation_id)
      LEFT JOIN numbered n
             ON a.ord IS NOT NULL AND n.sender_id = i.sender_id AND n.client_message_id = i.client_message_id
      LEFT JOIN member_lists l ON l.conversation_id = coalesce(s.conversation_id, n.conversation_id)
     ORDER BY i.ord;
END
$$;
