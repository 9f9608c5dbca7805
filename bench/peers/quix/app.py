"""The peer of `riverbank bench peer`: the same stateful job written with Quix Streams 3.28.

Per account: a balance with a no-overdraft check (a debit beyond the balance is refused). Per user: the
sum of accepted debits over a sliding hour of event time (`ts_ms`), the velocity. One result record and
one audit record per input. Events older than the user's newest by more than LATENESS_MAX_MS are refused
as too late (not applied). Each user owns one account in the workload and inputs are keyed by account,
so the state of a key (RocksDB, Quix's State) holds both the account's balance and its user's window.

Delivery: at-least-once (`processing_guarantee="at-least-once"`): the broker of this machine has no Kafka
transactions, so Quix's exactly-once mode cannot run here. After a crash, the inputs since the last commit
are processed again and their outputs produced again.

Inputs are riverbank envelopes (the same topic riverbank's job reads): the event is `value["payload"]`,
its id `value["event_id"]`.

    python app.py --broker 127.0.0.1:19092 --input T --results R --audit A --group G --state-dir D
"""
import argparse

from quixstreams import Application

# The window of the velocity sum (ms of event time), and how late an event may be (behind the newest
# event of its user) and still be applied.
WINDOW_MS = 3_600_000
LATENESS_MAX_MS = 600_000


def step(value, state):
    """Apply one input to the state of its key; returns the result and the audit record."""
    e = value["payload"]
    event_id = value["event_id"]
    ts, amount, kind = int(e["ts_ms"]), int(e["amount_minor"]), e["kind"]
    balance = state.get("balance", 0)
    newest = state.get("newest", None)
    debits = state.get("debits", [])
    if newest is not None and ts < newest - LATENESS_MAX_MS:
        status = "too_late"
    elif kind == "credit":
        status = "accepted"
        balance += amount
    elif kind == "debit" and amount <= balance:
        status = "accepted"
        balance -= amount
        debits.append([ts, amount])
    else:
        status = "refused"
    if status != "too_late":
        newest = ts if newest is None else max(newest, ts)
        horizon = newest - WINDOW_MS - LATENESS_MAX_MS
        debits = [d for d in debits if d[0] >= horizon]
        state.set("balance", balance)
        state.set("newest", newest)
        state.set("debits", debits)
    velocity = sum(a for (t, a) in debits if ts - WINDOW_MS < t <= ts)
    result = {
        "input_event_id": event_id,
        "account": e["account"],
        "user": e["user"],
        "status": status,
        "balance_minor": balance,
        "velocity_minor": velocity,
    }
    audit = {
        "input_event_id": event_id,
        "account": e["account"],
        "user": e["user"],
        "kind": kind,
        "amount_minor": amount,
        "ts_ms": ts,
        "status": status,
    }
    return {"result": result, "audit": audit}


def main():
    ap = argparse.ArgumentParser()
    for name in ("broker", "input", "results", "audit", "group", "state-dir"):
        ap.add_argument(f"--{name}", required=True)
    a = ap.parse_args()
    app = Application(
        broker_address=a.broker,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=a.state_dir,
        loglevel="WARNING",
    )
    inputs = app.topic(a.input, key_deserializer="str", value_deserializer="json")
    results = app.topic(a.results, key_serializer="str", value_serializer="json")
    audit = app.topic(a.audit, key_serializer="str", value_serializer="json")
    sdf = app.dataframe(inputs)
    sdf = sdf.apply(step, stateful=True)
    sdf.apply(lambda v: v["result"]).to_topic(results)
    sdf.apply(lambda v: v["audit"]).to_topic(audit)
    app.run()


if __name__ == "__main__":
    main()
