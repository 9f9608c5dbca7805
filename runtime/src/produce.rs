//! Producing to Kafka: every record carries its event id in a header, sends are pipelined and awaited.
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
pub use riverbank_schemas::processor::Emit;

/// Header carrying the event id, so consumers can deduplicate without decoding the payload.
pub const EVENT_ID_HEADER: &str = "riverbank-event-id";
/// Header of a record the router copied into a processor's log: `{topic}/{partition}/{offset}` of the
/// original (the processor deduplicates copies by it).
pub const SOURCE_HEADER: &str = "riverbank-source";
/// Header of a tick the router wrote into a processor's log: the wall time (ms) it stands for.
pub const TICK_HEADER: &str = "riverbank-tick";

/// One record to send: an emit, an explicit partition where one is given, and extra headers.
pub struct Outgoing<'a> {
    pub emit: &'a Emit,
    pub partition: Option<i32>,
    pub headers: &'a [(&'static str, String)],
}

/// Produce every emit and wait until all are acknowledged. Sends are pipelined; the producer's queue
/// bounds memory (a full queue makes `send` wait, which is the backpressure).
pub async fn produce_all(producer: &FutureProducer, emits: &[Emit], timeout: Duration) -> Result<(), String> {
    let items: Vec<(Option<i32>, &Emit)> = emits.iter().map(|e| (None, e)).collect();
    produce_at(producer, &items, timeout).await.map(|_| ())
}

/// As `produce_all`, with an explicit partition where one is given (checkpoints). Returns the
/// (partition, offset) each record was written at, in order.
pub async fn produce_at(
    producer: &FutureProducer,
    items: &[(Option<i32>, &Emit)],
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, String> {
    enqueue_at(producer, items, timeout).await?.landed().await
}

/// As `produce_at`, without waiting for the acknowledgements ([`enqueue`]).
pub async fn enqueue_at(
    producer: &FutureProducer,
    items: &[(Option<i32>, &Emit)],
    timeout: Duration,
) -> Result<InFlight, String> {
    let out: Vec<Outgoing<'_>> = items
        .iter()
        .map(|(partition, emit)| Outgoing { emit, partition: *partition, headers: &[] })
        .collect();
    enqueue(producer, &out, timeout).await
}

/// Waits between attempts to enqueue while the producer's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);

/// Send records with their headers; wait for every acknowledgement. Returns where each landed.
///
/// Records are enqueued strictly in order (waiting while the producer's queue is full), and the
/// producer is idempotent, so records to one partition land in the order given: the router's copies of
/// a source partition, a snapshot's chunks and a processor's outputs keep their order. (librdkafka's
/// own retrying `send` can reorder records that found the queue full.)
pub async fn send(
    producer: &FutureProducer,
    items: &[Outgoing<'_>],
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, String> {
    enqueue(producer, items, timeout).await?.landed().await
}

/// Records handed to the producer whose acknowledgements are still to come ([`enqueue`]).
#[must_use = "records are acknowledged only once `landed` says so"]
pub struct InFlight {
    deliveries: Vec<rdkafka::producer::DeliveryFuture>,
}

impl InFlight {
    /// Wait for every acknowledgement; where each record landed, in the order enqueued.
    pub async fn landed(self) -> Result<Vec<(i32, i64)>, String> {
        let mut landed = Vec::with_capacity(self.deliveries.len());
        for delivery in self.deliveries {
            match delivery.await {
                Ok(Ok(d)) => landed.push((d.partition, d.offset)),
                Ok(Err((err, _))) => return Err(format!("produce failed: {err}")),
                Err(_) => return Err("produce failed: the producer went away".to_owned()),
            }
        }
        Ok(landed)
    }
}

/// Hand records to the producer in order (as [`send`]) without waiting for their acknowledgements, so
/// a caller can do other work while they are on the wire. Only a full queue for `timeout` fails here.
pub async fn enqueue(
    producer: &FutureProducer,
    items: &[Outgoing<'_>],
    timeout: Duration,
) -> Result<InFlight, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut deliveries = Vec::with_capacity(items.len());
    let mut id = uuid::Uuid::encode_buffer();
    for o in items {
        let id = o.emit.event_id.as_hyphenated().encode_lower(&mut id);
        let mut headers = OwnedHeaders::new_with_capacity(1 + o.headers.len())
            .insert(Header { key: EVENT_ID_HEADER, value: Some(id.as_bytes()) });
        for (k, v) in o.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let mut record =
            FutureRecord::to(&o.emit.topic).key(&o.emit.key).payload(&o.emit.payload).headers(headers);
        if let Some(p) = o.partition {
            record = record.partition(p);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "produce failed: the producer's queue stayed full for {timeout:?}"
                        ));
                    }
                    record = r;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, _)) => return Err(format!("produce failed: {e}")),
            }
        }
    }
    Ok(InFlight { deliveries })
}

/// A header's value, if the message carries it as UTF-8 text.
pub fn header<'m, M: rdkafka::Message>(m: &'m M, key: &str) -> Option<&'m str> {
    use rdkafka::message::Headers as _;
    let h = m.headers()?.iter().find(|h| h.key == key)?;
    std::str::from_utf8(h.value?).ok()
}

/// The event id a message carries in [`EVENT_ID_HEADER`].
pub fn event_id<M: rdkafka::Message>(m: &M) -> Option<uuid::Uuid> {
    header(m, EVENT_ID_HEADER)?.parse().ok()
}
