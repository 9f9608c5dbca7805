//! Dead letters: an input that cannot be processed goes to the environment's dead-letter topic with the
//! reason and its raw bytes, acknowledged before its offset is passed.
use rdkafka::message::{Message, OwnedMessage};
use riverbank_schemas::processor::Emit;
use riverbank_schemas::{derived_id, DeadLetter, Environment, Topics};

/// Where a dead-lettered input was read.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub payload: &'a [u8],
}

impl<'a> From<&'a OwnedMessage> for Origin<'a> {
    fn from(m: &'a OwnedMessage) -> Self {
        Origin {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            payload: m.payload().unwrap_or_default(),
        }
    }
}

/// A dead letter for a Kafka input, as an `Emit` to the environment's dead-letter topic. Its id is
/// derived from where the input was read, so a replay dead-letters it under the same id.
pub fn dead_letter<'a>(
    topics: &Topics,
    env: Environment,
    rejected_by: &str,
    origin: impl Into<Origin<'a>>,
    reason: String,
) -> Emit {
    use base64::Engine as _;
    let o = origin.into();
    let id =
        derived_id(&["deadletter", rejected_by, o.topic, &o.partition.to_string(), &o.offset.to_string()]);
    let letter = DeadLetter {
        dead_letter_id: id,
        rejected_by: rejected_by.to_owned(),
        reason,
        source_topic: Some(o.topic.to_owned()),
        source_partition: Some(o.partition),
        source_offset: Some(o.offset),
        tenant_id: None,
        source: None,
        environment: Some(env),
        received_at: None,
        headers: Default::default(),
        raw_base64: base64::engine::general_purpose::STANDARD.encode(o.payload),
    };
    Emit {
        topic: topics.dead_letters(env),
        key: o.topic.to_owned(),
        event_id: id,
        payload: serde_json::to_vec(&letter).unwrap_or_default(),
    }
}
