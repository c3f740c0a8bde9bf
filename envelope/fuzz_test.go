package envelope

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzCheck feeds arbitrary bytes to the scanner: it must never panic, must
// accept only what encoding/json calls valid JSON, must agree with
// encoding/json on the fields it decodes, and what it accepts must survive
// Parse, Marshal and Parse again unchanged.
func FuzzCheck(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "python", "*.json"))
	for _, file := range files {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Add([]byte(valid))
	f.Add([]byte(`{"id":"a","type":"x.y","timestamp":1,"source":"s","data":{}}`))
	f.Add([]byte(`{"id":"\u00e9\ud83d\ude00","type":"a.b","ts":1e3,"source":"s\"q","data":{"x":[1,{"y":null}]},"correlate":null,"z":true}`))
	f.Add([]byte(`[{"a":1}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fields, err := Check(b, 0)
		if err != nil {
			if _, ok := AsError(err); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		var std map[string]any // exact keys, unlike decoding into a struct
		if err := json.Unmarshal(b, &std); err != nil {
			t.Fatalf("encoding/json cannot read what Check accepted: %v", err)
		}
		if std["id"] != fields.IDString() || std["type"] != fields.TypeString() || std["source"] != fields.SourceString() || std["ts"] != fields.TS {
			t.Fatalf("fields differ from encoding/json: %v vs %q %q %q %v", std, fields.IDString(), fields.TypeString(), fields.SourceString(), fields.TS)
		}
		if c, _ := std["correlate"].(string); fields.HasCorrelate != (std["correlate"] != nil) || c != fields.CorrelateString() {
			t.Fatalf("correlate differs: %v vs %q", std["correlate"], fields.CorrelateString())
		}
		e, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse refused what Check accepted: %v", err)
		}
		out, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed envelope: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse of Marshal output %q: %v", out, err)
		}
		out2, _ := again.Marshal()
		if !bytes.Equal(out, out2) {
			t.Fatalf("not stable:\n%s\n%s", out, out2)
		}
	})
}
