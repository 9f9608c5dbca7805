#!/usr/bin/env python3
"""Run every ClickHouse statement of riverbank on a current engine, in process (chdb).

Usage: check.py CATALOG.json

CATALOG.json (written by tests/chdb/main.rs) is
  {"database": NAME, "statements": [{"name": ..., "kind": "ddl" | "query", "sql": ...}, ...]}
with every bound value already substituted. The database is created first, then every DDL statement
runs in order, then every query (on the empty tables: the engine still parses, resolves and type-checks
each one). Each failure prints the statement's name, its SQL and the engine's error; the exit status is
non-zero if any statement failed. The last line is "chdb: N passed, M failed".
"""
import json
import sys
import tempfile


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: check.py CATALOG.json", file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        catalog = json.load(f)
    import chdb
    from chdb import session as chs

    database = catalog["database"]
    statements = catalog["statements"]
    failed = []
    passed = 0
    with tempfile.TemporaryDirectory(prefix="riverbank-chdb-") as path:
        sess = chs.Session(path)
        try:
            version = sess.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
            print(f"chdb {chdb.__version__}, ClickHouse {version}")
            sess.query(f"CREATE DATABASE IF NOT EXISTS {database}")
            sess.query(f"USE {database}")
            # DDL first (in its order), then the queries over the tables it made.
            ordered = [s for s in statements if s["kind"] == "ddl"] + [
                s for s in statements if s["kind"] != "ddl"
            ]
            for s in ordered:
                try:
                    sess.query(s["sql"], "CSV")
                    passed += 1
                except Exception as e:  # chdb raises its own error types; any refusal counts
                    failed.append(s["name"])
                    print(f"FAILED {s['kind']} {s['name']}:\n{s['sql']}\nerror: {e}\n", flush=True)
        finally:
            sess.close()
    if not statements:
        print("no statements in the catalog", file=sys.stderr)
        return 1
    if failed:
        print("failed: " + ", ".join(failed))
    print(f"chdb: {passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
