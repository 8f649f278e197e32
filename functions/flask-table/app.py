"""flask-table: a Flask app whose start-up builds a 10-million-entry lookup table in memory.

GET /?key=888888  ->  {"value": 888888}
GET /healthz      ->  ok (the table is built before the server accepts connections)

The table (key i -> value i) takes several seconds and ~1.2 GB to build: the kind of start-up cost
that a checkpoint taken after start-up removes from every cold start.
"""
import json
import logging
import os
import sys
import time

from flask import Flask, Response, request

TABLE_SIZE = int(os.environ.get("TABLE_SIZE", "10000000"))

log = logging.getLogger("flask-table")
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

_started = time.monotonic()
# Keys and values are distinct int objects, as in a real table whose values are not its keys.
TABLE = dict(zip(range(TABLE_SIZE), range(TABLE_SIZE)))
BUILD_SECONDS = time.monotonic() - _started
log.info("built a %d-entry table in %.2f s (pid %d)", len(TABLE), BUILD_SECONDS, os.getpid())

app = Flask(__name__)


def json_response(obj, status=200):
    return Response(json.dumps(obj) + "\n", status=status, mimetype="application/json")


@app.get("/")
def lookup():
    raw = request.args.get("key")
    if raw is None:
        return json_response({"error": "missing query parameter 'key'", "example": "/?key=888888"}, 400)
    try:
        key = int(raw)
    except ValueError:
        return json_response({"error": "key must be an integer", "key": raw}, 400)
    value = TABLE.get(key)
    if value is None:
        return json_response({"error": "key not found", "key": key}, 404)
    return json_response({"value": value})


@app.get("/healthz")
def healthz():
    return Response("ok\n", mimetype="text/plain")


@app.get("/stats")
def stats():
    return json_response({"entries": len(TABLE), "build_seconds": round(BUILD_SECONDS, 3), "pid": os.getpid()})


@app.errorhandler(404)
def not_found(_err):
    return json_response({"error": "not found", "path": request.path}, 404)


@app.errorhandler(405)
def method_not_allowed(_err):
    return json_response({"error": "method not allowed", "method": request.method}, 405)
