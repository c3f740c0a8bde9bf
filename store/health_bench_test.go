package store

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/envelope"
)

// benchHealthRecord is a record as the health hook builds it from a health
// envelope a Python service sent (envelope/testdata/python).
func benchHealthRecord(b *testing.B, fixture string) HealthRecord {
	b.Helper()
	raw, err := os.ReadFile("../envelope/testdata/python/" + fixture)
	if err != nil {
		b.Fatal(err)
	}
	f, err := envelope.Check(raw, 0)
	if err != nil {
		b.Fatal(err)
	}
	data, err := envelope.ParseHealth(f.Data)
	if err != nil {
		b.Fatal(err)
	}
	return HealthRecord{Source: f.SourceString(), Health: data, TS: f.TS, Received: time.Now(),
		Boot: "5d41402a-bc4b-2a76-b971-9d911017c592", Envelope: json.RawMessage(raw)}
}

// benchOpen opens a store in a fresh directory with the default history
// bounds (1000 records per service) and store.sync as given.
func benchOpen(b *testing.B, sync bool) *Store {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Dir = b.TempDir()
	cfg.Sync = sync
	s := New(cfg, nil)
	if err := s.Open(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// BenchmarkPutHealth is the store's share of one health update: latest
// record and history entry in one transaction (plus, every ~100 updates
// once a service has 1000 records, a prune of its oldest), with and without
// the fsync store.sync adds before the PUBACK.
func BenchmarkPutHealth(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			s := benchOpen(b, sync)
			r := benchHealthRecord(b, "health_error.json")
			t0 := time.Now()
			b.SetBytes(int64(len(r.Envelope)))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				r.Received = t0.Add(time.Duration(i) * time.Millisecond) // a new history key each time
				i++
				if err := s.PutHealth(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchFilled opens a store holding records history records of one service
// (sync off: only the reads are measured).
func benchFilled(b *testing.B, records int) (*Store, string) {
	b.Helper()
	s := benchOpen(b, false)
	r := benchHealthRecord(b, "health_ready.json")
	t0 := time.Now().Add(-time.Hour)
	for i := range records {
		r.Received = t0.Add(time.Duration(i) * time.Second)
		if err := s.PutHealth(r); err != nil {
			b.Fatal(err)
		}
	}
	return s, r.Source
}

// BenchmarkHealthOf reads a service's latest record (what the offline
// check and GET /v1/health/{source} do), with 1000 history records stored.
func BenchmarkHealthOf(b *testing.B) {
	s, source := benchFilled(b, 1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, found, err := s.HealthOf(source); err != nil || !found {
			b.Fatalf("found %v, %v", found, err)
		}
	}
}

// BenchmarkHistory reads a service's newest records, newest first (GET
// /v1/health/{source}/history?limit=N), with 1000 records stored.
func BenchmarkHistory(b *testing.B) {
	s, source := benchFilled(b, 1000)
	for _, limit := range []int{10, 100} {
		b.Run(fmt.Sprintf("limit=%d", limit), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				h, err := s.History(source, limit)
				if err != nil || len(h) != limit {
					b.Fatalf("%d records, %v", len(h), err)
				}
			}
		})
	}
}
