package envelope

import (
	"encoding/json"
	"strings"
	"testing"
)

// envelopeOf returns a valid envelope of about size bytes.
func envelopeOf(size int) []byte {
	head := `{"id":"9f1c2b3a4d5e4f60a1b2c3d4e5f60718","type":"stt.final","ts":1729123456.789123,"source":"stt-worker","data":{"text":"`
	tail := `","lang":"en","confidence":0.93},"correlate":"conv-001"}`
	return []byte(head + strings.Repeat("a", max(0, size-len(head)-len(tail))) + tail)
}

func benchValidate(b *testing.B, size int) {
	env := envelopeOf(size)
	b.SetBytes(int64(len(env)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Check(env, MaxSize); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkValidate200B(b *testing.B) { benchValidate(b, 200) }
func BenchmarkValidate4KiB(b *testing.B) { benchValidate(b, 4096) }

// The peer: what the obvious code does, encoding/json into a struct that
// keeps data raw (and still checks less than Check does).
func benchStdlib(b *testing.B, size int) {
	env := envelopeOf(size)
	b.SetBytes(int64(len(env)))
	b.ReportAllocs()
	for b.Loop() {
		var e struct {
			ID, Type, Source, Correlate string
			TS                          float64
			Data                        json.RawMessage
		}
		if err := json.Unmarshal(env, &e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStdlibUnmarshal200B(b *testing.B) { benchStdlib(b, 200) }
func BenchmarkStdlibUnmarshal4KiB(b *testing.B) { benchStdlib(b, 4096) }

func BenchmarkParse200B(b *testing.B) {
	env := envelopeOf(200)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(env); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshal200B(b *testing.B) {
	e, err := Parse(envelopeOf(200))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}
