package bridge

import (
	"fmt"
	"testing"

	"github.com/tarsmq/tarsmq/store"
)

func openStore(t testing.TB) *store.Store {
	t.Helper()
	cfg := store.DefaultConfig()
	cfg.Dir = t.TempDir()
	st := store.New(cfg, nil)
	if err := st.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(t.Context()) })
	return st
}

// A record the queue cannot read (a damaged store) is removed and counted;
// it does not block the messages behind it, and nothing panics.
func TestDamagedRecordDoesNotBlockTheQueue(t *testing.T) {
	st := openStore(t)
	q, err := openQueue(st, "fleet", QueueConfig{MaxMessages: 100})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if ok, err := q.push(record{topic: fmt.Sprint("t/", i), payload: []byte{byte(i)}, qos: 1}); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	for _, junk := range [][]byte{nil, {9}, {recordVersion, 1, 0xff, 0xff, 0, 0}} {
		if err := st.Put(q.key(2), junk, false); err != nil {
			t.Fatal(err)
		}
		if err := st.Put([]byte("bq:fleet:not-hex"), junk, false); err != nil {
			t.Fatal(err)
		}
		q, err = openQueue(st, "fleet", QueueConfig{MaxMessages: 100})
		if err != nil {
			t.Fatal(err)
		}
		rs, damaged, err := q.take(0, 10)
		if err != nil || damaged != 2 {
			t.Fatalf("take: %d damaged, %v", damaged, err)
		}
		if len(rs) != 2 || rs[0].topic != "t/0" || rs[1].topic != "t/2" {
			t.Fatalf("took %+v", rs)
		}
		if n, _, _, _, _ := q.stats(); n != 2 {
			t.Fatalf("%d counted", n)
		}
		if err := q.done(rs[:0]); err != nil {
			t.Fatal(err)
		}
		q.release()
		// put message 2 back for the next kind of junk
		if err := st.Put(q.key(2), encode(record{topic: "t/1", qos: 1}), false); err != nil {
			t.Fatal(err)
		}
	}
}

// drop_oldest never drops a message in flight, drops the oldest of the
// others, and what is left goes out in order.
func TestDropOldestSparesInflight(t *testing.T) {
	st := openStore(t)
	q, err := openQueue(st, "fleet", QueueConfig{MaxMessages: 5, Overflow: DropOldest})
	if err != nil {
		t.Fatal(err)
	}
	push := func(i int) {
		if ok, err := q.push(record{topic: fmt.Sprint(i), qos: 1}); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	for i := 1; i <= 5; i++ {
		push(i)
	}
	if rs, _, err := q.take(0, 1); err != nil || len(rs) != 1 || rs[0].topic != "1" {
		t.Fatalf("take: %v %v", rs, err)
	}
	push(6) // drops 2, not 1 (in flight)
	push(7) // drops 3
	q.release()
	rs, _, err := q.take(0, 10)
	var got []string
	for _, r := range rs {
		got = append(got, r.topic)
	}
	if err != nil || fmt.Sprint(got) != "[1 4 5 6 7]" {
		t.Fatalf("left %v %v", got, err)
	}
	if n, _, dropped, _, _ := q.stats(); n != 5 || dropped != 2 {
		t.Fatalf("%d queued, %d dropped", n, dropped)
	}
}
