#!/usr/bin/env python3
"""Readiness probe for a Kafka-protocol broker: a Metadata (v0) request must be answered with at least
one broker. Exit 0 when ready, 1 otherwise. Usage: kafka_ready.py HOST PORT [TIMEOUT_S]"""
import socket
import struct
import sys


def ready(host: str, port: int, timeout_s: float) -> bool:
    client_id = b"riverbank-ready"
    # api_key=3 (Metadata), api_version=0, correlation_id=7, client_id, topics=[] (all)
    body = struct.pack(">hhih", 3, 0, 7, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(struct.pack(">i", len(body)) + body)
            header = s.recv(4, socket.MSG_WAITALL)
            if len(header) < 4:
                return False
            (size,) = struct.unpack(">i", header)
            if size < 8 or size > 64 * 1024 * 1024:
                return False
            resp = b""
            while len(resp) < size:
                chunk = s.recv(size - len(resp))
                if not chunk:
                    return False
                resp += chunk
            correlation_id, brokers = struct.unpack(">ii", resp[:8])
            return correlation_id == 7 and brokers >= 1
    except OSError:
        return False


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    timeout_s = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    sys.exit(0 if ready(host, port, timeout_s) else 1)
