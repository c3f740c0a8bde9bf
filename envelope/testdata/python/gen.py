"""Writes the golden fixtures: envelopes byte-for-byte as the Python services
send them. Pydantic v2's model_dump_json() and orjson write compact JSON with
raw UTF-8 (json.dumps with separators=(",", ":") and ensure_ascii=False gives
the same bytes for these values); code using json.dumps() with its defaults
writes ", " and ": " and \\u escapes. None becomes null.

Run: python3 gen.py (standard library only)."""
import json

def compact(o):  # pydantic model_dump_json() / orjson.dumps()
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False)

def dumps(o):  # json.dumps() defaults
    return json.dumps(o)

fixtures = {
    "stt_final.json": compact({"id": "9f1c2b3a4d5e4f60a1b2c3d4e5f60718", "type": "stt.final", "ts": 1729123456.789123,
        "source": "stt-worker", "data": {"text": "hello", "lang": "en", "confidence": 0.93, "is_final": True}}),
    "llm_request_correlate.json": compact({"id": "0b3e7c1f9a2d4e5b8c6d7e8f9a0b1c2d", "type": "llm.request", "ts": 1729123457.5,
        "source": "router", "data": {"id": "rq-1", "text": "what time is it", "stream": True}, "correlate": "conv-001"}),
    "health_ready.json": compact({"id": "5d41402abc4b2a76b9719d911017c592", "type": "health.status", "ts": 1729123458.0,
        "source": "stt-worker", "data": {"ok": True, "event": "ready", "error": None, "timestamp": None}}),
    "health_error.json": compact({"id": "7f8e9d0c1b2a49384756a5b4c3d2e1f0", "type": "health.status", "ts": 1729123460.123,
        "source": "tts-worker", "data": {"ok": False, "event": None, "error": "broker connection lost", "timestamp": None}}),
    "correlate_null.json": compact({"id": "c4ca4238a0b923820dcc509a6f75849b", "type": "wake.event", "ts": 1729123461.25,
        "source": "wake-activation", "data": {"detected": True, "score": 0.87}, "correlate": None}),
    "json_dumps_ascii.json": dumps({"id": "e4da3b7fbbce2345d7772b0674a318d5", "type": "tts.say", "ts": 1729123459.25,
        "source": "llm-worker", "data": {"text": "Café — bonjour 😀", "voice": None}}),
    "orjson_utf8.json": compact({"id": "1679091c5a880faf6fb5e6087eb1b2dc", "type": "tts.say", "ts": 1729123459.25,
        "source": "llm-worker", "data": {"text": "Café — bonjour 😀", "voice": None}}),
    "llm_stream_delta.json": compact({"id": "8f14e45fceea167a5a36dedd4bea2543", "type": "llm.stream.delta", "ts": 1729123462.000001,
        "source": "llm-worker", "data": {"id": "rq-1", "seq": 3, "delta": "Hel\"lo\n", "done": False, "tokens": [1, 2, 3],
        "meta": {"model": "tiny", "usage": {"in": 12, "out": 3}}}}),
}

for name, text in fixtures.items():
    with open(name, "wb") as f:
        f.write(text.encode("utf-8"))
