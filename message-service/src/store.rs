//! The only code that reads or writes the `messages` schema (the group commit in [`crate::commit`] aside).
//!
//! Runs on deadpool-postgres (tokio-postgres underneath): statements are prepared once per connection
//! (`prepare_cached`) and arrays go in as single parameters (`unnest`), so a page, a sync or a membership change
//! is one or two round trips whatever its size.
//!
//! Because sequence numbers are dense (1..=last_seq, no holes), a history page is an exact seq range computed
//! from `last_seq` and read from the primary key with `BETWEEN`: no OFFSET, no over-fetching, and whether more
//! exists before or after is arithmetic, not another query.

use std::sync::LazyLock;

use anyhow::Context;
use chrono::{DateTime, Utc};
use common::protocol::messages::{Conversation, ConversationEntry, ConversationKind, Message, MessagesPage};
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::{Row, error::SqlState};

/// The columns of a message, in the order [`message_from`] reads them.
pub const MESSAGE_COLUMNS: &str = "conversation_id, seq, sender_id, client_message_id, body, sent_at";

pub fn message_from(row: &Row) -> Message {
    let sent_at: DateTime<Utc> = row.get(5);
    Message {
        conversation_id: row.get(0),
        seq: row.get(1),
        sender_id: row.get(2),
        client_message_id: row.get(3),
        body: row.get(4),
        sent_at: sent_at.timestamp_millis(),
    }
}

/// Entries of a user's conversation list (conversation, members, read position and newest message), for the
/// memberships `chosen` picks: a `WHERE` (on `m`, the user's membership rows, and `c`, their conversations) with
/// any `ORDER BY` and `LIMIT`. The members and the newest message are read only for the rows chosen: joined before
/// the `LIMIT`, a user in 10,000 conversations paid for reading the newest message of all of them for each page of
/// 50 (130 ms against 10 ms, measured in `docs/BENCHMARKS.md`, "Conversation lists").
fn entries_sql(chosen: &str) -> String {
    format!(
        "SELECT p.id, p.kind, p.title, p.last_seq, p.created_at, p.last_activity_at, p.read_seq,
                ARRAY(SELECT mm.user_id FROM messages.members mm WHERE mm.conversation_id = p.id ORDER BY mm.user_id),
                lm.conversation_id, lm.seq, lm.sender_id, lm.client_message_id, lm.body, lm.sent_at
           FROM (SELECT c.id, c.kind, c.title, c.last_seq, c.created_at, c.last_activity_at, m.read_seq
                   FROM messages.members m
                   JOIN messages.conversations c ON c.id = m.conversation_id
                   {chosen}) p
           LEFT JOIN messages.messages lm ON lm.conversation_id = p.id AND lm.seq = p.last_seq
          ORDER BY p.last_activity_at DESC, p.id DESC"
    )
}

/// What [`Store::list`] runs: `$1` user, `$2`/`$3` the cursor (activity, id) or null, `$4` rows.
static LIST_SQL: LazyLock<String> = LazyLock::new(|| {
    entries_sql(
        "WHERE m.user_id = $1
           AND ($2::timestamptz IS NULL OR (c.last_activity_at, c.id) < ($2::timestamptz, $3::bigint))
         ORDER BY c.last_activity_at DESC, c.id DESC
         LIMIT $4",
    )
});

/// What [`Store::entries`] runs: `$1` user, `$2` conversation ids.
static ENTRIES_SQL: LazyLock<String> =
    LazyLock::new(|| entries_sql("WHERE m.user_id = $1 AND c.id = ANY ($2::bigint[])"));

/// One conversation's entry: `$1` user, `$2` conversation.
static ENTRY_SQL: LazyLock<String> = LazyLock::new(|| entries_sql("WHERE m.user_id = $1 AND c.id = $2"));

fn entry_from(row: &Row) -> ConversationEntry {
    let created_at: DateTime<Utc> = row.get(4);
    let last_activity_at: DateTime<Utc> = row.get(5);
    let kind: &str = row.get(1);
    let last_message = row.get::<_, Option<i64>>(8).map(|conversation_id| {
        let sent_at: DateTime<Utc> = row.get(13);
        Message {
            conversation_id,
            seq: row.get(9),
            sender_id: row.get(10),
            client_message_id: row.get(11),
            body: row.get(12),
            sent_at: sent_at.timestamp_millis(),
        }
    });
    ConversationEntry {
        conversation: Conversation {
            id: row.get(0),
            kind: if kind == "group" { ConversationKind::Group } else { ConversationKind::Direct },
            title: row.get(2),
            members: row.get(7),
            last_seq: row.get(3),
            last_activity_at: last_activity_at.timestamp_millis(),
            created_at: created_at.timestamp_millis(),
        },
        read_seq: row.get(6),
        last_message,
    }
}

/// A position in a user's conversation list, most recent first: `u<last activity µs>:<id>`.
///
/// Microseconds, as PostgreSQL stores them: one group commit gives every conversation it touches the same
/// `last_activity_at`, and a cursor rounded to milliseconds would skip the rows between the rounded instant and
/// the true one. The `u` tells them from the earlier `<ms>:<id>` cursors, which are still read so a list paged
/// across an upgrade goes on, while a replica from before refuses a new cursor rather than misread it. An earlier
/// cursor names the millisecond its row's time was rounded down to, so it is read as that millisecond's last
/// microsecond: the next page may repeat a few rows of the one before (a client places entries by id), where
/// reading it as the first would skip the rows between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub last_activity_us: i64,
    pub id: i64,
}

impl ListCursor {
    /// The instants a cursor may name: 1970 to the end of year 9999. Every stored activity lies between, and
    /// PostgreSQL refuses timestamps far outside, so a cursor beyond either end means "before everything" or
    /// "before nothing" and is clamped rather than sent as it is.
    const RANGE_US: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999_999;

    pub fn parse(text: &str) -> Option<Self> {
        let (at, id) = text.split_once(':')?;
        let last_activity_us = match at.strip_prefix('u') {
            Some(us) => us.parse().ok()?,
            None => at.parse::<i64>().ok()?.saturating_mul(1_000).saturating_add(999),
        };
        Some(Self { last_activity_us, id: id.parse().ok()? })
    }

    pub fn encode(&self) -> String {
        format!("u{}:{}", self.last_activity_us, self.id)
    }

    fn at(&self) -> DateTime<Utc> {
        let us = self.last_activity_us.clamp(*Self::RANGE_US.start(), *Self::RANGE_US.end());
        DateTime::from_timestamp_micros(us).unwrap_or_default()
    }
}

/// The seq range of one history page, and whether more lies beyond it. Pure arithmetic over a dense sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    pub lo: i64,
    pub hi: i64,
    pub has_more_before: bool,
    pub has_more_after: bool,
}

/// Where a page sits: the newest, or before / after / around a seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAnchor {
    Latest,
    Before(i64),
    After(i64),
    Around(i64),
}

impl PageRange {
    pub fn new(anchor: PageAnchor, limit: i64, last_seq: i64) -> Self {
        let limit = limit.max(1);
        let (lo, hi) = match anchor {
            PageAnchor::Latest => (last_seq - limit + 1, last_seq),
            PageAnchor::Before(b) => {
                let hi = (b - 1).min(last_seq);
                (hi - limit + 1, hi)
            }
            PageAnchor::After(a) => {
                let lo = a.saturating_add(1).max(1);
                (lo, lo.saturating_add(limit - 1).min(last_seq))
            }
            PageAnchor::Around(x) => {
                let hi = (x.max(1) - limit / 2).max(1).saturating_add(limit - 1).min(last_seq);
                (hi - limit + 1, hi)
            }
        };
        let lo = lo.max(1);
        Self { lo, hi, has_more_before: lo.min(hi + 1) > 1, has_more_after: hi.max(lo - 1) < last_seq }
    }
}

/// What [`Store::unlisted`] finds among a sync's heads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unlisted {
    /// Conversations of the user's with messages after the head, most recently active first.
    pub behind: Vec<i64>,
    /// Conversations the user is not a member of (left, removed, never theirs, or no such conversation).
    pub removed: Vec<i64>,
}

/// Access to the `messages` schema. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("pool", &self.pool.status()).finish()
    }
}

impl Store {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool.get().await.context("getting a database connection")
    }

    /// The member's view of the conversation: `(last_seq, read_seq)`, or `None` when they are not a member (or it
    /// does not exist: the two are deliberately indistinguishable to a non-member).
    pub async fn membership(&self, user_id: i64, conversation_id: i64) -> anyhow::Result<Option<(i64, i64)>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT c.last_seq, m.read_seq FROM messages.members m
                   JOIN messages.conversations c ON c.id = m.conversation_id
                  WHERE m.conversation_id = $1 AND m.user_id = $2",
            )
            .await?;
        let row = client.query_opt(&statement, &[&conversation_id, &user_id]).await.context("reading membership")?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// One page of history (the caller has checked membership and read `last_seq`).
    pub async fn page(&self, conversation_id: i64, range: PageRange) -> anyhow::Result<MessagesPage> {
        let messages = if range.lo <= range.hi {
            let client = self.client().await?;
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages.messages
                  WHERE conversation_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq"
            );
            let statement = client.prepare_cached(&sql).await?;
            let rows =
                client.query(&statement, &[&conversation_id, &range.lo, &range.hi]).await.context("reading a page")?;
            rows.iter().map(message_from).collect()
        } else {
            Vec::new()
        };
        Ok(MessagesPage { messages, has_more_before: range.has_more_before, has_more_after: range.has_more_after })
    }

    /// The messages in `(after, hi]` of each conversation, ordered by conversation then seq.
    pub async fn ranges(&self, ranges: &[(i64, i64, i64)]) -> anyhow::Result<Vec<Message>> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ranges.iter().map(|r| r.0).collect();
        let los: Vec<i64> = ranges.iter().map(|r| r.1).collect();
        let his: Vec<i64> = ranges.iter().map(|r| r.2).collect();
        let client = self.client().await?;
        let sql = format!(
            "SELECT m.{} FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS r(cid, lo, hi)
               JOIN messages.messages m ON m.conversation_id = r.cid AND m.seq BETWEEN r.lo AND r.hi
              ORDER BY m.conversation_id, m.seq",
            MESSAGE_COLUMNS.replace(", ", ", m.")
        );
        let statement = client.prepare_cached(&sql).await?;
        let rows = client.query(&statement, &[&ids, &los, &his]).await.context("reading missed messages")?;
        Ok(rows.iter().map(message_from).collect())
    }

    /// A user's conversations, most recently active first (at most `limit`), and the cursor of the next page when
    /// more follow.
    pub async fn list(
        &self,
        user_id: i64,
        before: Option<ListCursor>,
        limit: u32,
    ) -> anyhow::Result<(Vec<ConversationEntry>, Option<ListCursor>)> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&LIST_SQL).await?;
        let (at, id) = match before {
            Some(cursor) => (Some(cursor.at()), cursor.id),
            None => (None, 0),
        };
        // One row more than asked says whether another page follows.
        let rows_asked = i64::from(limit) + 1;
        let mut rows =
            client.query(&statement, &[&user_id, &at, &id, &rows_asked]).await.context("listing conversations")?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = more.then(|| rows.last()).flatten().map(|row| ListCursor {
            last_activity_us: row.get::<_, DateTime<Utc>>(5).timestamp_micros(),
            id: row.get(0),
        });
        Ok((rows.iter().map(entry_from).collect(), next))
    }

    /// Of `heads` (conversation id, seq), for a client that holds conversations beyond the recent list (see
    /// `handlers::sync`): those `user_id` is a member of that have messages after their head, most recently active
    /// first, and those `user_id` is not a member of (in the order given).
    pub async fn unlisted(&self, user_id: i64, heads: &[(i64, i64)]) -> anyhow::Result<Unlisted> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT h.conversation_id, m.user_id IS NOT NULL
                   FROM unnest($2::bigint[], $3::bigint[]) WITH ORDINALITY AS h (conversation_id, seq, n)
                   LEFT JOIN messages.members m ON m.conversation_id = h.conversation_id AND m.user_id = $1
                   LEFT JOIN messages.conversations c ON c.id = m.conversation_id
                  WHERE m.user_id IS NULL OR c.last_seq > h.seq
                  ORDER BY c.last_activity_at DESC, c.id DESC, h.n",
            )
            .await?;
        let (ids, seqs): (Vec<i64>, Vec<i64>) = heads.iter().copied().unzip();
        let rows = client
            .query(&statement, &[&user_id, &ids, &seqs])
            .await
            .context("reading the conversations of a sync's heads beyond the recent list")?;
        let mut unlisted = Unlisted::default();
        for row in rows {
            let id: i64 = row.get(0);
            if row.get(1) { unlisted.behind.push(id) } else { unlisted.removed.push(id) }
        }
        Ok(unlisted)
    }

    /// The conversations `ids` that `user_id` is a member of, as they see them, most recently active first.
    pub async fn entries(&self, user_id: i64, ids: &[i64]) -> anyhow::Result<Vec<ConversationEntry>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&ENTRIES_SQL).await?;
        let rows = client.query(&statement, &[&user_id, &ids]).await.context("reading conversations")?;
        Ok(rows.iter().map(entry_from).collect())
    }

    /// One conversation as `user_id` sees it, if they are a member.
    pub async fn entry(&self, user_id: i64, conversation_id: i64) -> anyhow::Result<Option<ConversationEntry>> {
        let client = self.client().await?;
        entry_with(&client, user_id, conversation_id).await
    }

    /// The conversation without a user's perspective (for events), if it exists.
    pub async fn conversation(&self, conversation_id: i64) -> anyhow::Result<Option<Conversation>> {
        let client = self.client().await?;
        conversation_with(&client, conversation_id).await
    }

    /// The direct conversation of two users, created (with both as members) on first use. Returns it and whether
    /// this call created it. Safe when two replicas race: the pair is unique.
    pub async fn direct(&self, a: i64, b: i64) -> anyhow::Result<(Conversation, bool)> {
        let (low, high) = (a.min(b), a.max(b));
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .query_opt(
                "INSERT INTO messages.conversations (kind, direct_low, direct_high) VALUES ('direct', $1, $2)
                 ON CONFLICT (direct_low, direct_high) WHERE kind = 'direct' DO NOTHING RETURNING id",
                &[&low, &high],
            )
            .await
            .context("creating a direct conversation")?;
        let created = inserted.is_some();
        let id: i64 = match inserted {
            Some(row) => {
                let id: i64 = row.get(0);
                tx.execute(
                    "INSERT INTO messages.members (conversation_id, user_id) VALUES ($1, $2), ($1, $3)",
                    &[&id, &low, &high],
                )
                .await
                .context("adding direct members")?;
                id
            }
            None => tx
                .query_one(
                    "SELECT id FROM messages.conversations WHERE kind = 'direct' AND direct_low = $1 AND direct_high = $2",
                    &[&low, &high],
                )
                .await
                .context("finding a direct conversation")?
                .get(0),
        };
        let conversation = conversation_with(&tx, id).await?.context("the direct conversation just written")?;
        tx.commit().await.context("committing a direct conversation")?;
        Ok((conversation, created))
    }

    /// The id of the direct conversation of two users, if it exists (the common case: no write needed).
    pub async fn find_direct(&self, a: i64, b: i64) -> anyhow::Result<Option<i64>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT id FROM messages.conversations WHERE kind = 'direct' AND direct_low = $1 AND direct_high = $2",
            )
            .await?;
        let row =
            client.query_opt(&statement, &[&a.min(b), &a.max(b)]).await.context("finding a direct conversation")?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Creates a group with `creator` and `members` (deduplicated) as members.
    pub async fn create_group(&self, creator: i64, title: &str, members: &[i64]) -> anyhow::Result<Conversation> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = insert_group(&tx, creator, title, members).await?;
        let conversation = conversation_with(&tx, id).await?.context("the group just written")?;
        tx.commit().await.context("committing a group")?;
        Ok(conversation)
    }

    /// Creates a group as [`Store::create_group`] does, once per `client_group_id` of `creator`: a repeat of the
    /// same request (the same title and `members`, which must be sorted, without duplicates or the creator) finds
    /// the group the first one made. Safe when two replicas race: the id is unique per creator.
    pub async fn create_group_once(
        &self,
        creator: i64,
        client_group_id: &str,
        title: &str,
        members: &[i64],
    ) -> anyhow::Result<GroupCreate> {
        let mut client = self.client().await?;
        // The common case first: no earlier create with this id.
        if let Some(outcome) = repeated_group(&client, creator, client_group_id, title, members).await? {
            return Ok(outcome);
        }
        let tx = client.transaction().await?;
        let id = insert_group(&tx, creator, title, members).await?;
        // A concurrent create with the same id makes this wait for it; if it committed, this one does nothing.
        let recorded = tx
            .execute(
                "INSERT INTO messages.group_requests (creator_id, client_group_id, conversation_id, title, member_ids)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&creator, &client_group_id, &id, &title, &members],
            )
            .await
            .context("recording a group's client id")?;
        if recorded == 0 {
            tx.rollback().await.context("dropping a group made twice")?;
            return repeated_group(&client, creator, client_group_id, title, members)
                .await?
                .context("the group request that won the race");
        }
        let conversation = conversation_with(&tx, id).await?.context("the group just written")?;
        tx.commit().await.context("committing a group")?;
        Ok(GroupCreate::Created(conversation))
    }

    /// Changes a group's membership on behalf of `actor`, who must be a member. Returns the conversation after the
    /// change, or a [`MembershipError`].
    pub async fn change_members(
        &self,
        actor: i64,
        conversation_id: i64,
        change: MemberChange<'_>,
    ) -> anyhow::Result<Result<Conversation, MembershipError>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Lock the conversation: membership changes and sends serialise on it, so a message's recipients are the
        // members at its commit.
        let row = tx
            .query_opt("SELECT kind FROM messages.conversations WHERE id = $1 FOR UPDATE", &[&conversation_id])
            .await
            .context("locking a conversation")?;
        let is_member = tx
            .query_opt(
                "SELECT 1 FROM messages.members WHERE conversation_id = $1 AND user_id = $2",
                &[&conversation_id, &actor],
            )
            .await
            .context("checking membership")?
            .is_some();
        let Some(row) = row.filter(|_| is_member) else { return Ok(Err(MembershipError::NotAMember)) };
        if row.get::<_, &str>(0) != "group" {
            return Ok(Err(MembershipError::NotAGroup));
        }
        match change {
            MemberChange::Add(users) => {
                // The group's size after the change: users already in count once, so repeating an add that
                // filled the group is not refused.
                let after: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM (SELECT user_id FROM messages.members WHERE conversation_id = $1
                                               UNION SELECT unnest($2::bigint[])) AS members",
                        &[&conversation_id, &users],
                    )
                    .await?
                    .get(0);
                if after as usize > common::protocol::messages::MAX_GROUP_MEMBERS {
                    return Ok(Err(MembershipError::TooMany));
                }
                // New members start with the history read: it was written before they came.
                let added = tx
                    .execute(
                        "INSERT INTO messages.members (conversation_id, user_id, read_seq)
                         SELECT $1, u, c.last_seq FROM unnest($2::bigint[]) AS u, messages.conversations c
                          WHERE c.id = $1
                         ON CONFLICT DO NOTHING",
                        &[&conversation_id, &users],
                    )
                    .await
                    .context("adding members")?;
                // Joining is activity: the group goes to the top of its lists, where a new member looks for it
                // (a quiet group would otherwise land below every recent chat, or past the first page of a long
                // list, for someone who was offline when added). A repeated add changes nothing.
                // The database's clock, read under the conversation's lock, as a message's time is (migration 5).
                if added > 0 {
                    tx.execute(
                        "UPDATE messages.conversations
                            SET last_activity_at = greatest(last_activity_at, clock_timestamp())
                          WHERE id = $1",
                        &[&conversation_id],
                    )
                    .await
                    .context("marking the group active")?;
                }
            }
            MemberChange::Remove(user) => {
                let removed = tx
                    .execute(
                        "DELETE FROM messages.members WHERE conversation_id = $1 AND user_id = $2",
                        &[&conversation_id, &user],
                    )
                    .await
                    .context("removing a member")?;
                if removed == 0 {
                    return Ok(Err(MembershipError::NoSuchMember));
                }
            }
        }
        let conversation = conversation_with(&tx, conversation_id).await?.context("the conversation just changed")?;
        tx.commit().await.context("committing a membership change")?;
        Ok(Ok(conversation))
    }

    /// Moves a member's read position forward to `seq` (clamped to the conversation's last seq; never backwards).
    /// `None` when not a member.
    pub async fn mark_read(&self, user_id: i64, conversation_id: i64, seq: i64) -> anyhow::Result<Option<i64>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE messages.members m
                    SET read_seq = GREATEST(m.read_seq, LEAST($3, c.last_seq))
                   FROM messages.conversations c
                  WHERE m.conversation_id = $1 AND m.user_id = $2 AND c.id = m.conversation_id
              RETURNING m.read_seq",
            )
            .await?;
        let row = client.query_opt(&statement, &[&conversation_id, &user_id, &seq]).await.context("marking read")?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// A change to a group's members.
#[derive(Debug, Clone, Copy)]
pub enum MemberChange<'a> {
    Add(&'a [i64]),
    Remove(i64),
}

/// What [`Store::create_group_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCreate {
    /// Made a new group.
    Created(Conversation),
    /// Found the group an earlier create with the same id and request made, as it is now.
    Repeated(Conversation),
    /// The id already made a group with another title or other members.
    IdReused,
    /// The id's group exists, but its creator is no longer a member.
    CreatorLeft,
}

async fn insert_group(client: &impl GenericClient, creator: i64, title: &str, members: &[i64]) -> anyhow::Result<i64> {
    let mut all: Vec<i64> = members.iter().copied().chain([creator]).collect();
    all.sort_unstable();
    all.dedup();
    let id: i64 = client
        .query_one("INSERT INTO messages.conversations (kind, title) VALUES ('group', $1) RETURNING id", &[&title])
        .await
        .context("creating a group")?
        .get(0);
    client
        .execute(
            "INSERT INTO messages.members (conversation_id, user_id) SELECT $1, unnest($2::bigint[])",
            &[&id, &all],
        )
        .await
        .context("adding group members")?;
    Ok(id)
}

/// The outcome of a create whose id `creator` used before, or `None` if they did not.
async fn repeated_group(
    client: &impl GenericClient,
    creator: i64,
    client_group_id: &str,
    title: &str,
    members: &[i64],
) -> anyhow::Result<Option<GroupCreate>> {
    let Some(row) = client
        .query_opt(
            "SELECT conversation_id, title, member_ids FROM messages.group_requests
              WHERE creator_id = $1 AND client_group_id = $2",
            &[&creator, &client_group_id],
        )
        .await
        .context("finding a group's client id")?
    else {
        return Ok(None);
    };
    if row.get::<_, &str>(1) != title || row.get::<_, Vec<i64>>(2) != members {
        return Ok(Some(GroupCreate::IdReused));
    }
    let conversation = conversation_with(client, row.get(0)).await?.context("a group made by a recorded create")?;
    Ok(Some(if conversation.members.contains(&creator) {
        GroupCreate::Repeated(conversation)
    } else {
        GroupCreate::CreatorLeft
    }))
}

/// Why a membership change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipError {
    NotAMember,
    NotAGroup,
    NoSuchMember,
    TooMany,
}

async fn entry_with(
    client: &impl GenericClient,
    user_id: i64,
    conversation_id: i64,
) -> anyhow::Result<Option<ConversationEntry>> {
    let statement = client.prepare_cached(&ENTRY_SQL).await?;
    let row = client.query_opt(&statement, &[&user_id, &conversation_id]).await.context("reading a conversation")?;
    Ok(row.as_ref().map(entry_from))
}

async fn conversation_with(client: &impl GenericClient, conversation_id: i64) -> anyhow::Result<Option<Conversation>> {
    let statement = client
        .prepare_cached(
            "SELECT c.id, c.kind, c.title, c.last_seq, c.created_at, c.last_activity_at,
                    ARRAY(SELECT mm.user_id FROM messages.members mm WHERE mm.conversation_id = c.id ORDER BY mm.user_id)
               FROM messages.conversations c WHERE c.id = $1",
        )
        .await?;
    let row = client.query_opt(&statement, &[&conversation_id]).await.context("reading a conversation")?;
    Ok(row.map(|row| {
        let kind: &str = row.get(1);
        let created_at: DateTime<Utc> = row.get(4);
        let last_activity_at: DateTime<Utc> = row.get(5);
        Conversation {
            id: row.get(0),
            kind: if kind == "group" { ConversationKind::Group } else { ConversationKind::Direct },
            title: row.get(2),
            members: row.get(6),
            last_seq: row.get(3),
            last_activity_at: last_activity_at.timestamp_millis(),
            created_at: created_at.timestamp_millis(),
        }
    }))
}

/// Whether a database error is worth retrying the whole transaction for.
pub fn is_retryable(error: &tokio_postgres::Error) -> bool {
    matches!(error.code(), Some(code) if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(anchor: PageAnchor, limit: i64, last: i64) -> (i64, i64, bool, bool) {
        let r = PageRange::new(anchor, limit, last);
        (r.lo, r.hi, r.has_more_before, r.has_more_after)
    }

    /// Every node of an `EXPLAIN (FORMAT JSON)` plan, each with whether it lies below a `Limit`.
    fn nodes(plan: &serde_json::Value, under_limit: bool, out: &mut Vec<(String, bool)>) {
        let kind = plan["Node Type"].as_str().unwrap_or_default();
        let relation = plan["Relation Name"].as_str().unwrap_or_default();
        out.push((format!("{kind} {relation}"), under_limit));
        for child in plan["Plans"].as_array().into_iter().flatten() {
            nodes(child, under_limit || kind == "Limit", out);
        }
    }

    #[tokio::test]
    async fn a_list_page_reads_the_newest_message_of_its_own_rows_only() {
        let db = common::testing::TestDb::new().await;
        crate::migrate(&db.url()).await.unwrap();
        let store = Store::new(crate::startup::pool(&db.url(), 2).unwrap());
        let client = store.client().await.unwrap();
        // User 1 in 300 conversations, three messages each; the newest activity is conversation 300's.
        client
            .batch_execute(
                "INSERT INTO messages.conversations (kind, direct_low, direct_high, last_seq, last_activity_at)
                 SELECT 'direct', 1, g + 1, 3, timestamptz '2026-01-01' + g * interval '1 second'
                   FROM generate_series(1, 300) g;
                 INSERT INTO messages.members (conversation_id, user_id)
                 SELECT id, u FROM messages.conversations, LATERAL (VALUES (direct_low), (direct_high)) AS v(u);
                 INSERT INTO messages.messages (conversation_id, seq, sender_id, client_message_id, body, sent_at)
                 SELECT c.id, s, 1, c.id || '-' || s, 'message ' || s || ' of ' || c.id, now()
                   FROM messages.conversations c, generate_series(1, 3) s;
                 ANALYZE messages.conversations, messages.members, messages.messages;",
            )
            .await
            .unwrap();

        let (page, next) = store.list(1, None, 50).await.unwrap();
        let ids: Vec<i64> = page.iter().map(|e| e.conversation.id).collect();
        assert_eq!(ids, (251..=300).rev().collect::<Vec<i64>>(), "newest first");
        for entry in &page {
            let last = entry.last_message.as_ref().expect("each has messages");
            assert_eq!((last.seq, &last.body), (3, &format!("message 3 of {}", entry.conversation.id)));
            assert_eq!(entry.conversation.members, [1, entry.conversation.id + 1]);
        }
        let (rest, _) = store.list(1, next, 50).await.unwrap();
        assert_eq!(rest.first().map(|e| e.conversation.id), Some(250), "the next page follows on");

        // The plan: messages are read by a join above the LIMIT (for the 51 rows it keeps), never below it, where
        // they would be read for every conversation the user is in.
        let explain = format!("EXPLAIN (FORMAT JSON) {}", *LIST_SQL);
        let row = client.query_one(&explain, &[&1i64, &None::<DateTime<Utc>>, &0i64, &51i64]).await.unwrap();
        let plan: serde_json::Value = row.get(0);
        let mut all = Vec::new();
        nodes(&plan[0]["Plan"], false, &mut all);
        let reads: Vec<&(String, bool)> = all.iter().filter(|(node, _)| node.ends_with(" messages")).collect();
        assert!(!reads.is_empty(), "the plan reads the messages table somewhere: {all:?}");
        assert!(reads.iter().all(|(_, under_limit)| !under_limit), "{all:?}");
    }

    #[test]
    fn the_latest_page_ends_at_the_last_seq() {
        assert_eq!(range(PageAnchor::Latest, 50, 120), (71, 120, true, false));
        assert_eq!(range(PageAnchor::Latest, 50, 10), (1, 10, false, false));
        let empty = PageRange::new(PageAnchor::Latest, 50, 0);
        assert!(empty.lo > empty.hi && !empty.has_more_before && !empty.has_more_after);
    }

    #[test]
    fn pages_before_and_after_a_seq_exclude_it() {
        assert_eq!(range(PageAnchor::Before(71), 50, 120), (21, 70, true, true));
        assert_eq!(range(PageAnchor::Before(21), 50, 120), (1, 20, false, true));
        assert_eq!(range(PageAnchor::After(70), 50, 120), (71, 120, true, false));
        assert_eq!(range(PageAnchor::After(0), 50, 120), (1, 50, false, true));
    }

    #[test]
    fn pages_past_either_end_are_empty_but_say_what_lies_beyond() {
        let r = PageRange::new(PageAnchor::Before(1), 50, 120);
        assert!(r.lo > r.hi && !r.has_more_before && r.has_more_after);
        let r = PageRange::new(PageAnchor::After(120), 50, 120);
        assert!(r.lo > r.hi && r.has_more_before && !r.has_more_after);
    }

    #[test]
    fn a_page_around_a_seq_centres_on_it_within_bounds() {
        assert_eq!(range(PageAnchor::Around(60), 50, 120), (35, 84, true, true));
        assert_eq!(range(PageAnchor::Around(3), 50, 120), (1, 50, false, true));
        assert_eq!(range(PageAnchor::Around(119), 50, 120), (71, 120, true, false));
    }

    #[test]
    fn cursors_round_trip_in_microseconds() {
        let cursor = ListCursor { last_activity_us: 1_700_000_000_123_456, id: 42 };
        assert_eq!(cursor.encode(), "u1700000000123456:42");
        assert_eq!(ListCursor::parse(&cursor.encode()), Some(cursor));
        assert_eq!(cursor.at().timestamp_micros(), 1_700_000_000_123_456);
        // A cursor from before microseconds names the millisecond its row's time was rounded down to: read as
        // that millisecond's end, so a row at .123456 with a lower id is not skipped.
        assert_eq!(
            ListCursor::parse("1700000000123:42"),
            Some(ListCursor { last_activity_us: 1_700_000_000_123_999, id: 42 })
        );
        for bad in ["nope", "12:", ":3", "1.5:3", "u:3", "uu1:3", "99999999999999999999:1"] {
            assert_eq!(ListCursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn cursors_beyond_any_stored_instant_are_clamped_not_refused_by_the_database() {
        let far_past = ListCursor { last_activity_us: i64::MIN, id: 1 };
        assert_eq!(far_past.at(), DateTime::<Utc>::UNIX_EPOCH);
        let far_future = ListCursor { last_activity_us: i64::MAX, id: 1 };
        assert_eq!(far_future.at().to_rfc3339(), "9999-12-31T23:59:59.999999+00:00");
    }
}
