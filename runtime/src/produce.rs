//! Producing to Kafka: every record carries its event id in a header, sends are pipelined and awaited.
use std::time::Duration;

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
    let out: Vec<Outgoing<'_>> = items
        .iter()
        .map(|(partition, emit)| Outgoing { emit, partition: *partition, headers: &[] })
        .collect();
    send(producer, &out, timeout).await
}

/// Send records with their headers; wait for every acknowledgement. Returns where each landed.
pub async fn send(
    producer: &FutureProducer,
    items: &[Outgoing<'_>],
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, String> {
    let sends = items.iter().map(|o| {
        let id = o.emit.event_id.to_string();
        let mut headers =
            OwnedHeaders::new().insert(Header { key: EVENT_ID_HEADER, value: Some(id.as_bytes()) });
        for (k, v) in o.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let mut record =
            FutureRecord::to(&o.emit.topic).key(&o.emit.key).payload(&o.emit.payload).headers(headers);
        if let Some(p) = o.partition {
            record = record.partition(p);
        }
        producer.send(record, timeout)
    });
    let mut landed = Vec::with_capacity(items.len());
    for result in futures::future::join_all(sends).await {
        match result {
            Ok(delivery) => landed.push((delivery.partition, delivery.offset)),
            Err((err, _)) => return Err(format!("produce failed: {err}")),
        }
    }
    Ok(landed)
}
