package envelope

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// golden are the fixtures of testdata/python (written by gen.py with
// Python's own json module) and what they must decode to.
var golden = []struct {
	file                       string
	id, typ, source, correlate string
	ts                         float64
	data                       string // compared after compacting
	extra                      map[string]string
}{
	{"stt_final.json", "9f1c2b3a4d5e4f60a1b2c3d4e5f60718", "stt.final", "stt-worker", "", 1729123456.789123,
		`{"text":"hello","lang":"en","confidence":0.93,"is_final":true}`, nil},
	{"llm_request_correlate.json", "0b3e7c1f9a2d4e5b8c6d7e8f9a0b1c2d", "llm.request", "router", "conv-001", 1729123457.5,
		`{"id":"rq-1","text":"what time is it","stream":true}`, nil},
	{"health_ready.json", "5d41402abc4b2a76b9719d911017c592", "health.status", "stt-worker", "", 1729123458,
		`{"ok":true,"event":"ready","error":null,"timestamp":null}`, nil},
	{"health_error.json", "7f8e9d0c1b2a49384756a5b4c3d2e1f0", "health.status", "tts-worker", "", 1729123460.123,
		`{"ok":false,"event":null,"error":"broker connection lost","timestamp":null}`, nil},
	{"correlate_null.json", "c4ca4238a0b923820dcc509a6f75849b", "wake.event", "wake-activation", "", 1729123461.25,
		`{"detected":true,"score":0.87}`, nil},
	{"json_dumps_ascii.json", "e4da3b7fbbce2345d7772b0674a318d5", "tts.say", "llm-worker", "", 1729123459.25,
		`{"text":"Caf\u00e9 \u2014 bonjour \ud83d\ude00","voice":null}`, nil},
	{"orjson_utf8.json", "1679091c5a880faf6fb5e6087eb1b2dc", "tts.say", "llm-worker", "", 1729123459.25,
		`{"text":"Café — bonjour 😀","voice":null}`, nil},
	{"llm_stream_delta.json", "8f14e45fceea167a5a36dedd4bea2543", "llm.stream.delta", "llm-worker", "", 1729123462.000001,
		`{"id":"rq-1","seq":3,"delta":"Hel\"lo\n","done":false,"tokens":[1,2,3],"meta":{"model":"tiny","usage":{"in":12,"out":3}}}`, nil},
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "python", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func compact(t testing.TB, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestPythonFixtures(t *testing.T) {
	for _, g := range golden {
		t.Run(g.file, func(t *testing.T) {
			b := readFixture(t, g.file)
			if err := Validate(b); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			e, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if e.ID != g.id || e.Type != g.typ || e.Source != g.source || e.Correlate != g.correlate || e.TS != g.ts {
				t.Errorf("got %+v", e)
			}
			var want, got any
			_ = json.Unmarshal([]byte(g.data), &want)
			_ = json.Unmarshal(e.Data, &got)
			if compact(t, mustJSON(t, want)) != compact(t, mustJSON(t, got)) {
				t.Errorf("data %s, want %s", e.Data, g.data)
			}
			// What Go writes, Python's json.loads reads to the same values.
			out, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			var fromPython, fromGo map[string]any
			_ = json.Unmarshal(b, &fromPython)
			_ = json.Unmarshal(out, &fromGo)
			if g.correlate == "" {
				delete(fromPython, "correlate") // null and absent mean the same
			}
			if compact(t, mustJSON(t, fromPython)) != compact(t, mustJSON(t, fromGo)) {
				t.Errorf("re-encoded\n%s\nfrom\n%s", out, b)
			}
		})
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPythonHealth(t *testing.T) {
	for file, want := range map[string]Health{
		"health_ready.json": {OK: true, Event: "ready"},
		"health_error.json": {OK: false, Error: "broker connection lost"},
	} {
		e, err := Parse(readFixture(t, file))
		if err != nil {
			t.Fatal(err)
		}
		h, err := ParseHealth(e.Data)
		if err != nil || h != want {
			t.Errorf("%s: %+v %v, want %+v", file, h, err, want)
		}
	}
}

const valid = `{"id":"a1","type":"stt.final","ts":1729123456.789,"source":"stt-worker","data":{"text":"hi"}}`

// Each invalid envelope fails on the named field with the named rule.
func TestInvalidEnvelopes(t *testing.T) {
	big := `{"id":"a","type":"x.y","ts":1,"source":"s","data":{"b":"` + strings.Repeat("x", MaxSize) + `"}}`
	deep := `{"id":"a","type":"x.y","ts":1,"source":"s","data":` + strings.Repeat(`{"a":`, MaxDepth) + `1` + strings.Repeat("}", MaxDepth) + `}`
	cases := []struct {
		name, in string
		field    string
		rule     Rule
	}{
		{"empty", ``, "", RuleNotJSON},
		{"not JSON", `hello`, "", RuleNotJSON},
		{"truncated", valid[:40], "", RuleNotJSON},
		{"trailing garbage", valid + `x`, "", RuleNotJSON},
		{"two objects", valid + valid, "", RuleNotJSON},
		{"array", `[1,2]`, "", RuleNotObject},
		{"string", `"envelope"`, "", RuleNotObject},
		{"not UTF-8", strings.Replace(valid, "hi", "h\xffi", 1), "", RuleNotJSON},
		{"raw control char", strings.Replace(valid, "hi", "h\x01i", 1), "", RuleNotJSON},
		{"bad escape", strings.Replace(valid, "hi", `h\qi`, 1), "", RuleNotJSON},
		{"short unicode escape", strings.Replace(valid, "hi", `h\u12`, 1), "", RuleNotJSON},
		{"bad number", strings.Replace(valid, "1729123456.789", "1729123456.", 1), "", RuleNotJSON},
		{"oversized", big, "", RuleTooLarge},
		{"too deep", deep, "", RuleTooDeep},
		{"missing id", `{"type":"x.y","ts":1,"source":"s","data":{}}`, "id", RuleMissing},
		{"missing type", `{"id":"a","ts":1,"source":"s","data":{}}`, "type", RuleMissing},
		{"missing ts", `{"id":"a","type":"x.y","source":"s","data":{}}`, "ts", RuleMissing},
		{"missing source", `{"id":"a","type":"x.y","ts":1,"data":{}}`, "source", RuleMissing},
		{"missing data", `{"id":"a","type":"x.y","ts":1,"source":"s"}`, "data", RuleMissing},
		{"timestamp instead of ts", `{"id":"a","type":"x.y","timestamp":1729123456.7,"source":"s","data":{}}`, "ts", RuleTimestamp},
		{"id number", strings.Replace(valid, `"a1"`, `12`, 1), "id", RuleWrongType},
		{"id empty", strings.Replace(valid, `"a1"`, `""`, 1), "id", RuleInvalid},
		{"id too long", strings.Replace(valid, `"a1"`, `"`+strings.Repeat("a", MaxIDLen+1)+`"`, 1), "id", RuleInvalid},
		{"type null", strings.Replace(valid, `"stt.final"`, `null`, 1), "type", RuleWrongType},
		{"type upper case", strings.Replace(valid, `"stt.final"`, `"STT.Final"`, 1), "type", RuleInvalid},
		{"type empty segment", strings.Replace(valid, `"stt.final"`, `"stt..final"`, 1), "type", RuleInvalid},
		{"type with space", strings.Replace(valid, `"stt.final"`, `"stt final"`, 1), "type", RuleInvalid},
		{"ts string", strings.Replace(valid, `1729123456.789`, `"1729123456.789"`, 1), "ts", RuleWrongType},
		{"ts milliseconds", strings.Replace(valid, `1729123456.789`, `1729123456789`, 1), "ts", RuleInvalid},
		{"ts negative", strings.Replace(valid, `1729123456.789`, `-5`, 1), "ts", RuleInvalid},
		{"ts overflow", strings.Replace(valid, `1729123456.789`, `1e400`, 1), "ts", RuleInvalid},
		{"source bool", strings.Replace(valid, `"stt-worker"`, `true`, 1), "source", RuleWrongType},
		{"source empty", strings.Replace(valid, `"stt-worker"`, `""`, 1), "source", RuleInvalid},
		{"source control char", strings.Replace(valid, `"stt-worker"`, `"stt\u0000"`, 1), "source", RuleInvalid},
		{"data array", strings.Replace(valid, `{"text":"hi"}`, `[1]`, 1), "data", RuleWrongType},
		{"data string", strings.Replace(valid, `{"text":"hi"}`, `"hi"`, 1), "data", RuleWrongType},
		{"data null", strings.Replace(valid, `{"text":"hi"}`, `null`, 1), "data", RuleWrongType},
		{"correlate number", strings.Replace(valid, `}}`, `},"correlate":7}`, 1), "correlate", RuleWrongType},
		{"correlate empty", strings.Replace(valid, `}}`, `},"correlate":""}`, 1), "correlate", RuleInvalid},
		{"duplicate ts", strings.Replace(valid, `"ts":1729123456.789`, `"ts":1,"ts":2`, 1), "ts", RuleDuplicate},
		{"duplicate id via escape", strings.Replace(valid, `"ts"`, `"\u0069d":"b","ts"`, 1), "id", RuleDuplicate},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate([]byte(tc.in))
			e, ok := AsError(err)
			if !ok {
				t.Fatalf("got %v, want a contract error", err)
			}
			if e.Field != tc.field || e.Rule != tc.rule {
				t.Fatalf("got field %q rule %q (%v), want field %q rule %q", e.Field, e.Rule, e, tc.field, tc.rule)
			}
			if tc.field != "" && !strings.Contains(e.Error(), `"`+tc.field+`"`) {
				t.Errorf("message %q does not name the field", e)
			}
			if _, err := Parse([]byte(tc.in)); err == nil {
				t.Error("Parse accepted what Validate refused")
			}
		})
	}
}

func TestTimestampErrorSaysSo(t *testing.T) {
	err := Validate([]byte(`{"id":"a","type":"x.y","timestamp":1729123456.7,"source":"s","data":{}}`))
	if err == nil || !strings.Contains(err.Error(), `named "ts"`) {
		t.Fatalf("got %v", err)
	}
}

func TestExtraFieldsKept(t *testing.T) {
	in := strings.Replace(valid, `}}`, `},"trace":{"span":"x"},"v":2,"timestamp":1729123456.7}`, 1)
	e, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Extra["trace"]) != `{"span":"x"}` || string(e.Extra["v"]) != "2" || len(e.Extra) != 3 {
		t.Fatalf("extra: %v", e.Extra)
	}
	out, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(out), `,"timestamp":1729123456.7,"trace":{"span":"x"},"v":2}`) {
		t.Fatalf("marshal: %s", out)
	}
}

func TestNewAndDecode(t *testing.T) {
	type final struct {
		Text string `json:"text"`
	}
	before := time.Now()
	e, err := New("stt.final", "stt-worker", final{Text: "<hello & bye>"}, WithCorrelate("conv-1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(e.ID) != 32 || e.ID[12] != '4' || e.Correlate != "conv-1" {
		t.Errorf("id %q correlate %q", e.ID, e.Correlate)
	}
	if e.Time().Before(before.Truncate(time.Microsecond)) || e.Time().After(time.Now()) {
		t.Errorf("ts %v not now", e.Time())
	}
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"data":{"text":"<hello & bye>"}`) {
		t.Errorf("HTML characters escaped: %s", b)
	}
	back, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode[final](back)
	if err != nil || got.Text != "<hello & bye>" {
		t.Fatalf("decode: %+v %v", got, err)
	}
	for _, bad := range []struct {
		typ, source string
		data        any
	}{{"STT", "s", nil}, {"stt.final", "", nil}, {"stt.final", "s", []int{1}}, {"stt.final", "s", make(chan int)}} {
		if _, err := New(bad.typ, bad.source, bad.data); err == nil {
			t.Errorf("New(%q, %q, %T) accepted", bad.typ, bad.source, bad.data)
		}
	}
}

func TestTSWrittenAsPythonFloat(t *testing.T) {
	for ts, want := range map[float64]string{1729123458: `"ts":1729123458.0,`, 1729123456.789123: `"ts":1729123456.789123,`} {
		e := &Envelope{ID: "a", Type: "x.y", TS: ts, Source: "s"}
		b, err := e.Marshal()
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%v: %s %v", ts, b, err)
		}
	}
}

func TestParseHealthRules(t *testing.T) {
	for in, ok := range map[string]bool{
		`{"ok":true}`:                           true,
		`{"ok":false,"error":"x","event":null}`: true,
		`{"event":"ready"}`:                     false,
		`{"ok":"yes"}`:                          false,
		`{"ok":true,"event":3}`:                 false,
	} {
		if _, err := ParseHealth([]byte(in)); (err == nil) != ok {
			t.Errorf("%s: %v", in, err)
		}
	}
}

// parseNumber's fast path must round exactly as strconv does.
func TestParseNumberAgreesWithStrconv(t *testing.T) {
	for _, s := range []string{"0", "-0", "0.1", "1729123456.789123", "1729123456.7891234", "9007199254740991",
		"9007199254740993", "0.30000000000000004", "1e5", "-2.5E-3", "123456789012345678901234567890", "4.35",
		"0.0000000000000000000001", "1.00000000000000000000001", "17291234567891234567"} {
		want, _ := strconv.ParseFloat(s, 64)
		if got := parseNumber([]byte(s)); got != want {
			t.Errorf("parseNumber(%s) = %v, strconv says %v", s, got, want)
		}
	}
}
