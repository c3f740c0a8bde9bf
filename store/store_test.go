package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/envelope"
)

func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.Dir = t.TempDir()
	return cfg
}

func open(t *testing.T, cfg Config) *Store {
	t.Helper()
	s := New(cfg, nil)
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func closeStore(t *testing.T, s *Store) {
	t.Helper()
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func record(source string, ok bool, event string, at time.Time) HealthRecord {
	return HealthRecord{Source: source, Health: envelope.Health{OK: ok, Event: event}, TS: envelope.Seconds(at),
		Received: at, Boot: "boot-1", Envelope: json.RawMessage(`{}`)}
}

func TestHealthLatestAndHistory(t *testing.T) {
	s := open(t, testConfig(t))
	t0 := time.Now()
	for i, ev := range []string{"starting", "ready", "degraded"} {
		if err := s.PutHealth(record("stt", i != 2, ev, t0.Add(time.Duration(i)*time.Second))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutHealth(record("tts", true, "ready", t0)); err != nil {
		t.Fatal(err)
	}
	all, err := s.Health()
	if err != nil || len(all) != 2 || all[0].Source != "stt" || all[0].Health.Event != "degraded" || all[1].Source != "tts" {
		t.Fatalf("latest: %+v %v", all, err)
	}
	hist, err := s.History("stt", 10)
	if err != nil || len(hist) != 3 || hist[0].Health.Event != "degraded" || hist[2].Health.Event != "starting" {
		t.Fatalf("history: %+v %v", hist, err)
	}
	if h, _ := s.History("stt", 2); len(h) != 2 {
		t.Fatalf("limit 2 gave %d", len(h))
	}
	if h, _ := s.History("st", 10); len(h) != 0 {
		t.Fatalf("a prefix of a name matched: %+v", h)
	}
	if _, found, _ := s.HealthOf("nobody"); found {
		t.Fatal("found a service never recorded")
	}
}

func TestHistoryBoundedByCount(t *testing.T) {
	cfg := testConfig(t)
	cfg.History.MaxPerService = 5
	s := open(t, cfg)
	t0 := time.Now()
	for i := range 40 {
		if err := s.PutHealth(record("stt", true, "tick", t0.Add(time.Duration(i)*time.Millisecond))); err != nil {
			t.Fatal(err)
		}
	}
	h, _ := s.History("stt", 100)
	if len(h) != 5 || !h[0].Received.Equal(t0.Add(39*time.Millisecond)) {
		t.Fatalf("kept %d, newest %v", len(h), h[0].Received)
	}
}

func TestHistoryExpiresByAge(t *testing.T) {
	cfg := testConfig(t)
	cfg.History.MaxAge = time.Second
	s := open(t, cfg)
	if err := s.PutHealth(record("stt", true, "ready", time.Now())); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.History("stt", 10); len(h) != 1 {
		t.Fatal("not stored")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, _ := s.History("stt", 10)
		if len(h) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("history did not expire")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, found, _ := s.HealthOf("stt"); !found {
		t.Fatal("the latest record must not expire with the history")
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	cfg := testConfig(t)
	s := New(cfg, nil)
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	_ = s.PutHealth(record("stt", true, "ready", time.Now()))
	_ = s.Put([]byte("m:r:a/b"), []byte("retained"), true)
	_ = s.SetLastSeen(map[string]time.Time{"stt": time.Unix(1729123456, 0)})
	closeStore(t, s)

	s = open(t, cfg)
	if _, found, _ := s.HealthOf("stt"); !found {
		t.Fatal("health lost")
	}
	var got []byte
	_ = s.Scan([]byte("m:r:"), func(_, v []byte) error { got = bytes.Clone(v); return nil })
	if string(got) != "retained" {
		t.Fatalf("retained %q", got)
	}
	if seen, _ := s.LastSeen(); !seen["stt"].Equal(time.Unix(1729123456, 0)) {
		t.Fatalf("last seen %v", seen)
	}
	if s.Recovered() != nil {
		t.Fatal("a healthy store reported a recovery")
	}
}

// damage writes a store with data, closes it, and applies hurt to its files.
func damage(t *testing.T, cfg Config, hurt func(dbDir string)) {
	t.Helper()
	s := New(cfg, nil)
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		_ = s.PutHealth(record("svc"+string(rune('a'+i%26)), true, "ready", time.Now()))
	}
	if err := s.EndStart(); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)
	hurt(filepath.Join(cfg.Dir, "db"))
}

func TestDamagedDatabaseMovedAside(t *testing.T) {
	for name, hurt := range map[string]func(string){
		"manifest bytes flipped": func(dir string) {
			p := filepath.Join(dir, "MANIFEST")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			for i := 8; i < len(b); i += 7 {
				b[i] ^= 0xff
			}
			_ = os.WriteFile(p, b, 0o600)
		},
		"table truncated": func(dir string) {
			tables, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
			if len(tables) == 0 {
				t.Fatal("no table written")
			}
			fi, _ := os.Stat(tables[0])
			if err := os.Truncate(tables[0], fi.Size()/2); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t)
			damage(t, cfg, hurt)
			s := open(t, cfg) // must not fail
			r := s.Recovered()
			if r == nil || r.MovedTo == "" || r.Reason == "" {
				t.Fatalf("recovery %+v", r)
			}
			if _, err := os.Stat(filepath.Join(r.MovedTo, "MANIFEST")); err != nil {
				t.Fatalf("the damaged copy was not kept: %v", err)
			}
			if err := s.PutHealth(record("stt", true, "ready", time.Now())); err != nil {
				t.Fatalf("fresh store does not work: %v", err)
			}
			closeStore(t, s)
			again := open(t, cfg) // the recovery is remembered
			if again.Recovered() == nil || again.Recovered().MovedTo != r.MovedTo {
				t.Fatalf("recovery not remembered: %+v", again.Recovered())
			}
		})
	}
}

func TestCrashLoopMovesDatabaseAside(t *testing.T) {
	cfg := testConfig(t)
	damage(t, cfg, func(string) {})
	for range crashLoopLimit { // starts that never reached Started
		s := New(cfg, nil)
		if err := s.Open(); err != nil {
			t.Fatal(err)
		}
		if s.Recovered() != nil {
			t.Fatal("moved aside too early")
		}
		closeStore(t, s)
	}
	s := open(t, cfg)
	if r := s.Recovered(); r == nil || !strings.Contains(r.Reason, "failed to start") {
		t.Fatalf("recovery %+v", r)
	}
}

func TestLockedDatabaseIsNotDamage(t *testing.T) {
	cfg := testConfig(t)
	first := open(t, cfg)
	_ = first.PutHealth(record("stt", true, "ready", time.Now()))
	second := New(cfg, nil)
	err := second.Open()
	want := fmt.Sprintf("another process holds it (pid %d)", os.Getpid())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("second open: %v, want an error with %q", err, want)
	}
	if first.Recovered() != nil || second.Recovered() != nil {
		t.Fatal("a locked database was moved aside")
	}
	if _, found, _ := first.HealthOf("stt"); !found {
		t.Fatal("data lost")
	}
}

// A state directory anyone may write to is refused, with the fix.
func TestRefusesWorldWritableDir(t *testing.T) {
	cfg := testConfig(t)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfg.Dir, 0o777); err != nil {
		t.Fatal(err)
	}
	err := New(cfg, nil).Open()
	if err == nil || !strings.Contains(err.Error(), "world-writable") || !strings.Contains(err.Error(), "chmod o-w") {
		t.Fatalf("open of a 0777 dir: %v", err)
	}
	if err := os.Chmod(cfg.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	closeStore(t, open(t, cfg))

	// A directory the store creates gets store.dir_mode; a world-writable
	// dir_mode is refused before anything is created.
	fresh := testConfig(t)
	fresh.Dir, fresh.DirMode = filepath.Join(t.TempDir(), "new"), "0750"
	closeStore(t, open(t, fresh))
	if fi, err := os.Stat(fresh.Dir); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("created dir: %v %v", fi.Mode(), err)
	}
	fresh.DirMode = "0777"
	if err := fresh.Validate(); err == nil || !strings.Contains(err.Error(), "store.dir_mode") {
		t.Fatalf("0777 dir_mode: %v", err)
	}
}

func TestRefuses32Bit(t *testing.T) {
	err := checkPlatform(32)
	if err == nil || !strings.Contains(err.Error(), "64-bit") || !strings.Contains(err.Error(), "32-bit") {
		t.Fatalf("got %v", err)
	}
	if checkPlatform(64) != nil {
		t.Fatal("64-bit refused")
	}
}

// Starts that fail without a crash (the database locked by another process,
// say) are not counted towards the crash loop, and a database another
// process holds is never moved aside.
func TestFailedOpensAreNoCrashLoop(t *testing.T) {
	cfg := testConfig(t)
	holder := open(t, cfg)
	_ = holder.PutHealth(record("stt", true, "ready", time.Now()))
	for range crashLoopLimit + 2 {
		if err := New(cfg, nil).Open(); err == nil {
			t.Fatal("opened a locked store")
		}
	}
	if n := New(cfg, nil).startFailures(); n > 1 {
		t.Fatalf("%d failed opens counted as crashes", n)
	}
	if err := writeFileSync(filepath.Join(cfg.Dir, "starting"), []byte("9\n")); err != nil {
		t.Fatal(err)
	}
	err := New(cfg, nil).Open()
	if err == nil || !strings.Contains(err.Error(), "another process holds it") {
		t.Fatalf("crash-loop recovery of a held store: %v", err)
	}
	if _, found, _ := holder.HealthOf("stt"); !found {
		t.Fatal("the holder lost its data")
	}
}
