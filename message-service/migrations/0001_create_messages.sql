-- message-service owns the `messages` schema: conversations, their members, and the messages themselves.

CREATE TABLE messages.conversations (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             TEXT        NOT NULL CHECK (kind IN ('direct', 'group')),
    title            TEXT,
    -- A direct conversation is unique per pair of users: (low id, high id).
    direct_low       BIGINT,
    direct_high      BIGINT,
    -- The seq of the newest message. Sequence numbers are allocated from it under a row lock, so they are dense.
    last_seq         BIGINT      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_activity_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'direct') = (direct_low IS NOT NULL AND direct_high IS NOT NULL)),
    CHECK (direct_low IS NULL OR direct_low < direct_high),
    CHECK ((kind = 'group') = (title IS NOT NULL))
);

CREATE UNIQUE INDEX conversations_direct_pair ON messages.conversations (direct_low, direct_high)
    WHERE kind = 'direct';

CREATE TABLE messages.members (
    conversation_id BIGINT      NOT NULL REFERENCES messages.conversations (id),
    user_id         BIGINT      NOT NULL,
    -- The highest seq this member has read; it only moves forward.
    read_seq        BIGINT      NOT NULL DEFAULT 0 CHECK (read_seq >= 0),
    joined_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);

-- "My conversations": every list and sync starts here.
CREATE INDEX members_by_user ON messages.members (user_id, conversation_id);

CREATE TABLE messages.messages (
    conversation_id   BIGINT      NOT NULL REFERENCES messages.conversations (id),
    seq               BIGINT      NOT NULL CHECK (seq > 0),
    sender_id         BIGINT      NOT NULL,
    client_message_id TEXT        NOT NULL,
    body              TEXT        NOT NULL,
    sent_at           TIMESTAMPTZ NOT NULL,
    -- History pages walk this index by seq: before / after / around, never OFFSET.
    PRIMARY KEY (conversation_id, seq)
);

-- Exactly-once effect: a retried or redelivered send finds its message here instead of storing a second one.
CREATE UNIQUE INDEX messages_client_id ON messages.messages (sender_id, client_message_id);
