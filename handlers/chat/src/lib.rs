//! Chat rooms: join, leave, send, with the last messages of each room kept in
//! tenant state. The reference behaviour that handlers in other languages
//! must match (see the conformance suite).
//!
//! Routes (every one needs a `channel`, the room, e.g. `room:42`):
//! - `chat.join`: subscribe to the room, publish `{"kind":"joined","from":sub}`,
//!   reply `{"history":[...]}` (the last [`HISTORY_LEN`] messages, oldest first).
//!   With data `{"since":{"offset":N,"epoch":"..."}}` (the last event the app
//!   saw, on a room that keeps channel history) it subscribes with recovery:
//!   the host replays what was missed after a `subscribed` frame.
//! - `chat.leave`: unsubscribe, publish `{"kind":"left","from":sub}`, reply `{}`.
//! - `chat.send` with data `{"text": "..."}`: append to the room's history,
//!   publish `{"kind":"message","seq":n,"from":sub,"text":...,"at":ms}`,
//!   reply `{"seq":n}`.
//!
//! Rejections: `channel_required` (no channel), `empty_text` (text empty or
//! only white space), `text_too_long` (over [`MAX_TEXT_CHARS`] characters),
//! `unknown_route`.

use serde::{Deserialize, Serialize};
use sluice_guest_sdk::{
    Actions, Connection, Handler, HandlerError, HandlerResult, Message, clock, state,
};

/// Messages kept per room.
pub const HISTORY_LEN: usize = 20;
/// Longest accepted text, in characters.
pub const MAX_TEXT_CHARS: usize = 500;

#[derive(Deserialize)]
struct Send {
    text: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct Line {
    seq: u64,
    from: String,
    text: String,
    at: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Room {
    next_seq: u64,
    history: Vec<Line>,
}

fn room_key(channel: &str) -> String {
    format!("room:{channel}")
}

/// `chat.join`'s optional data.
#[derive(Deserialize)]
struct Join {
    since: Option<Since>,
}

#[derive(Deserialize)]
struct Since {
    offset: u64,
    epoch: String,
}

struct Chat;

impl Handler for Chat {
    fn on_message(conn: &Connection, msg: &Message) -> HandlerResult {
        let Some(channel) = msg.channel.as_deref() else {
            return Err(HandlerError::reject(
                "channel_required",
                "chat routes need a channel",
            ));
        };
        let from = conn.principal.subject.as_str();
        match msg.route.as_str() {
            "chat.join" => {
                let room: Room = state::get_json(&room_key(channel))?.unwrap_or_default();
                // Anything but a well-formed `since` is a plain join.
                let since = serde_json::from_str::<Join>(&msg.data)
                    .ok()
                    .and_then(|j| j.since);
                let actions = match since {
                    Some(p) => Actions::new().subscribe_since(channel, p.offset, p.epoch),
                    None => Actions::new().subscribe(channel),
                };
                Ok(actions
                    .publish(
                        channel,
                        &serde_json::json!({"kind": "joined", "from": from}),
                    )
                    .reply(&serde_json::json!({"history": room.history})))
            }
            "chat.leave" => Ok(Actions::new()
                .unsubscribe(channel)
                .publish(channel, &serde_json::json!({"kind": "left", "from": from}))
                .reply(&serde_json::json!({}))),
            "chat.send" => {
                let send: Send = msg.data()?;
                if send.text.trim().is_empty() {
                    return Err(HandlerError::reject("empty_text", "text must not be empty"));
                }
                if send.text.chars().count() > MAX_TEXT_CHARS {
                    return Err(HandlerError::reject(
                        "text_too_long",
                        format!("text must be at most {MAX_TEXT_CHARS} characters"),
                    ));
                }
                let key = room_key(channel);
                let mut room: Room = state::get_json(&key)?.unwrap_or_default();
                room.next_seq += 1;
                let line = Line {
                    seq: room.next_seq,
                    from: from.to_owned(),
                    text: send.text,
                    at: clock::now_ms(),
                };
                room.history.push(line.clone());
                if room.history.len() > HISTORY_LEN {
                    let excess = room.history.len() - HISTORY_LEN;
                    room.history.drain(..excess);
                }
                state::set_json(&key, &room)?;
                Ok(Actions::new()
                    .publish(
                        channel,
                        &serde_json::json!({
                            "kind": "message", "seq": line.seq, "from": line.from,
                            "text": line.text, "at": line.at,
                        }),
                    )
                    .reply(&serde_json::json!({"seq": line.seq})))
            }
            other => Err(HandlerError::reject(
                "unknown_route",
                format!("chat has no route {other:?}"),
            )),
        }
    }
}

sluice_guest_sdk::export_handler!(Chat);
