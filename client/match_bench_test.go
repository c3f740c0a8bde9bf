package client

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/tarsmq/tarsmq/internal/topic"
)

// benchMessages are the topics a robot's service receives, each with the
// envelope a Python service sends there (envelope/testdata/python).
var benchMessages = []struct{ topic, fixture string }{
	{"stt/final", "stt_final.json"},
	{"llm/stream/delta", "llm_stream_delta.json"},
	{"system/health/stt-worker", "health_ready.json"},
	{"tts/say", "orjson_utf8.json"},
	{"wake/event", "correlate_null.json"},
	{"llm/request", "llm_request_correlate.json"},
}

// benchFilters returns n filters, a mix of exact ones, "+" and "#" ones and
// a shared subscription: the first six each match one of benchMessages'
// topics, the rest (other services' topics) match none.
func benchFilters(n int) []string {
	base := []string{"stt/final", "llm/stream/+", "system/health/#", "$share/tts/tts/say", "wake/+", "llm/request"}
	var out []string
	for i := range n {
		switch {
		case i < len(base):
			out = append(out, base[i])
		case i%3 == 0:
			out = append(out, fmt.Sprintf("svc%d/request", i))
		case i%3 == 1:
			out = append(out, fmt.Sprintf("svc%d/+/reply", i))
		default:
			out = append(out, fmt.Sprintf("svc%d/events/#", i))
		}
	}
	return out
}

// benchSubscribed is a client, never connected, with n subscriptions made
// through Subscribe (each with its goroutine and queue) whose handlers do
// nothing.
func benchSubscribed(b *testing.B, n int) *Client {
	b.Helper()
	c, err := New(DefaultConfig("unix:///nonexistent/tarsmq.sock", "bench"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close(context.Background()) })
	for _, f := range benchFilters(n) {
		if _, err := c.Subscribe(context.Background(), f, func(context.Context, Message) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	return c
}

var subCounts = []int{1, 10, 50}

// BenchmarkDispatchMatch is how receive picks the subscriptions a message
// goes to: every subscription's filter matched against the topic, under
// the subscriptions' read lock, for 1, 10 and 50 subscriptions. Each op is
// one message; the topics cycle through benchMessages.
func BenchmarkDispatchMatch(b *testing.B) {
	for _, n := range subCounts {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			c := benchSubscribed(b, n)
			b.ReportAllocs()
			i, matched := 0, 0
			for b.Loop() {
				t := benchMessages[i%len(benchMessages)].topic
				i++
				c.subsMu.RLock()
				for _, s := range c.subs {
					if topic.Match(s.match, t) {
						matched++
					}
				}
				c.subsMu.RUnlock()
			}
			b.ReportMetric(float64(matched)/float64(i), "matches/op")
		})
	}
}

// BenchmarkReceive is the whole of receive, paho's callback for each
// incoming PUBLISH: envelope parsing, deduplication (off, the default),
// matching and the hand-off to each matching subscription's queue, whose
// goroutine runs a handler that does nothing.
func BenchmarkReceive(b *testing.B) {
	pubs := make([]*paho.Publish, len(benchMessages))
	size := 0
	for i, m := range benchMessages {
		payload, err := os.ReadFile("../envelope/testdata/python/" + m.fixture)
		if err != nil {
			b.Fatal(err)
		}
		pubs[i] = &paho.Publish{Topic: m.topic, Payload: payload, QoS: 1}
		size += len(payload)
	}
	for _, n := range subCounts {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			c := benchSubscribed(b, n)
			b.SetBytes(int64(size / len(pubs)))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := c.receive(paho.PublishReceived{Packet: pubs[i%len(pubs)]}); err != nil {
					b.Fatal(err)
				}
				i++
			}
			st := c.Stats()
			if st.Invalid > 0 {
				b.Fatalf("%d fixtures not taken as envelopes", st.Invalid)
			}
			b.ReportMetric(float64(st.Dropped)/float64(i), "dropped/op")
		})
	}
}
