//! A chat client for tests, built on [`WsClient`]: it keeps what a real client keeps — every message it has seen,
//! by conversation and seq — plus the order live events arrived in, and it resumes with `sync` the way the web
//! app does. Tests compare these views with each other and with the database.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde_json::{Value, json};

use super::ws::{Ending, WsClient};

pub struct Chat {
    pub ws: WsClient,
    pub user_id: i64,
    pub token: String,
    /// (conversation, seq) → message, from live events, replies and syncs.
    pub view: BTreeMap<(i64, i64), Value>,
    /// (conversation, seq) of every live `message` frame, in arrival order.
    pub live: Vec<(i64, i64)>,
    /// Frames other than messages and replies (conversation, read, resync), in order.
    pub other: Vec<Value>,
    next_id: u64,
}

/// The outcome of one send.
#[derive(Debug, Clone)]
pub enum Sent {
    Acked(Value),
    Refused(Value),
    /// The socket ended before an answer came: the client must retry with the same client message id.
    Unanswered,
}

impl Chat {
    pub async fn connect(address: &str, token: &str, user_id: i64) -> Chat {
        let (ws, ready) = WsClient::authenticated_to(address, token).await;
        assert_eq!(ready["user"]["id"], user_id);
        Chat {
            ws,
            user_id,
            token: token.to_owned(),
            view: BTreeMap::new(),
            live: Vec::new(),
            other: Vec::new(),
            next_id: 0,
        }
    }

    /// Reconnects to `address` (another gateway, say) and syncs, as the web app does after any disconnect.
    pub async fn reconnect(&mut self, address: &str) {
        let (ws, _) = WsClient::authenticated_to(address, &self.token).await;
        self.ws = ws;
        self.sync().await;
    }

    fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("r{}", self.next_id)
    }

    fn absorb_message(&mut self, message: &Value) {
        let key = (message["conversationId"].as_i64().expect("conversationId"), message["seq"].as_i64().expect("seq"));
        if let Some(known) = self.view.get(&key) {
            assert_eq!(known, message, "two different messages claim {key:?}");
        }
        self.view.insert(key, message.clone());
    }

    /// Handles an unasked frame: a live message goes into the view and the live log.
    fn absorb(&mut self, frame: Value) {
        if frame["type"] == "message" {
            let message = &frame["message"];
            self.live.push((message["conversationId"].as_i64().unwrap(), message["seq"].as_i64().unwrap()));
            self.absorb_message(message);
        } else {
            self.other.push(frame);
        }
    }

    /// The newest seq held of each conversation with nothing missing below it.
    pub fn heads(&self) -> HashMap<i64, i64> {
        let mut heads: HashMap<i64, i64> = HashMap::new();
        for &(conversation, seq) in self.view.keys() {
            let head = heads.entry(conversation).or_insert(0);
            if seq == *head + 1 {
                *head = seq;
            }
        }
        heads
    }

    /// `sync` until nothing is truncated.
    pub async fn sync(&mut self) {
        loop {
            let heads: Vec<Value> =
                self.heads().into_iter().map(|(c, s)| json!({ "conversationId": c, "seq": s })).collect();
            let reply = self.request(json!({ "type": "sync", "heads": heads })).await;
            assert_eq!(reply["type"], "reply", "sync failed: {reply}");
            for message in reply["result"]["data"]["messages"].as_array().expect("messages").clone() {
                self.absorb_message(&message);
            }
            if reply["result"]["data"]["truncated"].as_array().is_none_or(Vec::is_empty) {
                return;
            }
        }
    }

    /// Sends a request and waits for its answer, absorbing live frames met on the way.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id();
        frame["id"] = json!(id);
        self.ws.send_json(&frame).await;
        loop {
            let frame = self.ws.try_next_frame(Duration::from_secs(10)).await.expect("socket open").expect("an answer");
            if frame["id"] == json!(id) {
                return frame;
            }
            self.absorb(frame);
        }
    }

    /// Sends `items` ((client id, body) pairs) to a conversation with up to `window` in flight; stops early if
    /// the socket ends (the rest are `Unanswered`).
    pub async fn send_many(&mut self, conversation_id: i64, items: &[(String, String)], window: usize) -> Vec<Sent> {
        let mut results = vec![Sent::Unanswered; items.len()];
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut next = 0;
        let mut answered = 0;
        while answered < items.len() {
            while next < items.len() && ids.len() - answered < window {
                let id = self.next_id();
                let (client_id, body) = &items[next];
                let frame = json!({ "type": "sendMessage", "id": id, "conversationId": conversation_id,
                    "clientMessageId": client_id, "body": body });
                if self.ws.try_send_json(&frame).await.is_err() {
                    return results;
                }
                ids.insert(id, next);
                next += 1;
            }
            match self.ws.try_next_frame(Duration::from_secs(15)).await {
                Ok(Some(frame)) => {
                    let index = frame["id"].as_str().and_then(|id| ids.get(id)).copied();
                    match (index, frame["type"].as_str()) {
                        (Some(index), Some("reply")) => {
                            let message = frame["result"]["data"].clone();
                            self.absorb_message(&message);
                            results[index] = Sent::Acked(message);
                            answered += 1;
                        }
                        (Some(index), Some("error")) => {
                            results[index] = Sent::Refused(frame);
                            answered += 1;
                        }
                        _ => self.absorb(frame),
                    }
                }
                Ok(None) => panic!("no answer for 15 s with {} sends in flight", ids.len() - answered),
                Err(_) => return results,
            }
        }
        results
    }

    /// Reads frames until none arrives for `quiet` (or the socket ends).
    pub async fn drain(&mut self, quiet: Duration) -> Option<Ending> {
        loop {
            match self.ws.try_next_frame(quiet).await {
                Ok(Some(frame)) => self.absorb(frame),
                Ok(None) => return None,
                Err(ending) => return Some(ending),
            }
        }
    }

    /// The seqs held of one conversation, ascending.
    pub fn seqs(&self, conversation_id: i64) -> Vec<i64> {
        self.view.range((conversation_id, 0)..(conversation_id + 1, 0)).map(|(&(_, seq), _)| seq).collect()
    }

    /// (seq, client message id) of one conversation, ascending: what "the same order for everyone" compares.
    pub fn order(&self, conversation_id: i64) -> Vec<(i64, String)> {
        self.view
            .range((conversation_id, 0)..(conversation_id + 1, 0))
            .map(|(&(_, seq), m)| (seq, m["clientMessageId"].as_str().unwrap_or_default().to_owned()))
            .collect()
    }
}
