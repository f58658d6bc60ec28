-- A group made with a client-chosen id (`clientGroupId`) is recorded here, so that retrying the create (after a
-- timeout, a lost reply, a reconnect) returns the group the first call made instead of making a second one: what
-- `messages_client_id` does for sends. The id names one create of its creator: the title and the other members
-- asked for are kept to tell a retry (the same request) from a reuse of the id for another group (refused).
--
-- Replicas that do not know this migration keep working: they never read the table, and a create they serve is
-- simply not retry-safe.
CREATE TABLE messages.group_requests (
    creator_id      BIGINT      NOT NULL,
    client_group_id TEXT        NOT NULL,
    conversation_id BIGINT      NOT NULL REFERENCES messages.conversations (id),
    -- The request as it was checked: the trimmed title, and the other members sorted, without duplicates or the
    -- creator.
    title           TEXT        NOT NULL,
    member_ids      BIGINT[]    NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (creator_id, client_group_id)
);
