package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsRunWithoutFile(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "/var/lib/tarsmq")
	cfg, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Store.Dir != "/var/lib/tarsmq" || cfg.Listeners.TCP.Address != "127.0.0.1:1883" || cfg.Log.Level != "info" {
		t.Fatalf("defaults: %+v", cfg)
	}
}

// The file overrides the defaults it names and keeps the rest; the
// environment overrides the file.
func TestFileThenEnvironment(t *testing.T) {
	p := writeFile(t, "t.yaml", `
listeners:
  unix: { path: "", mode: "0600" }
  tcp:  { address: "127.0.0.1:1884" }
limits:
  max_queued_bytes: 2MiB
slow_subscriber:
  block_timeout: 500ms
log: { level: debug }
`)
	t.Setenv("TARSMQ_LISTENERS_TCP_ADDRESS", "127.0.0.1:1999")
	t.Setenv("TARSMQ_LIMITS_MAX_PACKET_SIZE", "64KiB")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	switch {
	case cfg.Listeners.Unix.Path != "":
		t.Errorf("unix path %q, want off", cfg.Listeners.Unix.Path)
	case cfg.Listeners.TCP.Address != "127.0.0.1:1999":
		t.Errorf("env did not override the file: %s", cfg.Listeners.TCP.Address)
	case cfg.Limits.MaxQueuedBytes != 2<<20 || cfg.Limits.MaxPacketSize != 64<<10:
		t.Errorf("sizes %v %v", cfg.Limits.MaxQueuedBytes, cfg.Limits.MaxPacketSize)
	case cfg.SlowSubscriber.BlockTimeout != 500*time.Millisecond:
		t.Errorf("block timeout %v", cfg.SlowSubscriber.BlockTimeout)
	case cfg.Limits.MaxInflight != 1024 || cfg.Log.Format != "text":
		t.Errorf("unnamed keys lost their defaults: %+v", cfg)
	case cfg.Log.Level != "debug":
		t.Errorf("log level %s", cfg.Log.Level)
	}
}

func TestUnknownKeyNamedWithLine(t *testing.T) {
	p := writeFile(t, "t.yaml", "listeners:\n  tcp:\n    adress: 127.0.0.1:1883\n")
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), "adress") || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("got %v", err)
	}
}

func TestBadEnvironmentNamesTheVariable(t *testing.T) {
	t.Setenv("TARSMQ_LIMITS_MAX_INFLIGHT", "lots")
	_, err := Load("")
	if err == nil || !strings.Contains(err.Error(), "TARSMQ_LIMITS_MAX_INFLIGHT") {
		t.Fatalf("got %v", err)
	}
}

func TestValidateNamesEveryBadField(t *testing.T) {
	cfg := Default()
	cfg.Store.Dir = "state"
	cfg.Log.Level = "loud"
	cfg.Log.Format = "xml"
	cfg.Listeners.Unix.Mode = "rw"
	err := cfg.Validate()
	for _, want := range []string{"store.dir:", "log.level:", "log.format:", "listeners.unix.mode:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q missing from %v", want, err)
		}
	}
}

func TestRedact(t *testing.T) {
	type bridge struct {
		URL      string
		Password string `secret:"true"`
	}
	type cfg struct {
		Name    string
		Token   string `secret:"true"`
		Empty   string `secret:"true"`
		Bridges []bridge
		Ptr     *bridge
	}
	in := cfg{Name: "n", Token: "t0k", Bridges: []bridge{{"u", "pw"}}, Ptr: &bridge{"u", "pw2"}}
	out := Redact(in)
	if out.Name != "n" || out.Token != Redacted || out.Empty != "" || out.Bridges[0].Password != Redacted || out.Bridges[0].URL != "u" || out.Ptr.Password != Redacted {
		t.Fatalf("redacted: %+v %+v", out, out.Ptr)
	}
	if in.Token != "t0k" || in.Bridges[0].Password != "pw" || in.Ptr.Password != "pw2" {
		t.Fatal("Redact changed its input")
	}
}

func TestDiffNamesKeys(t *testing.T) {
	a := Default()
	b := Default()
	if d := Diff(a, b); len(d) != 0 {
		t.Fatalf("equal configs differ in %v", d)
	}
	b.Log.Level = "debug"
	b.Listeners.TCP.Address = "127.0.0.1:1999"
	b.Contract.Exempt = append(b.Contract.Exempt, "raw/#")
	b.Store.Dir = "/elsewhere"
	got := strings.Join(Diff(a, b), " ")
	want := "listeners.tcp.address contract.exempt store.dir log.level"
	if got != want {
		t.Fatalf("Diff = %q, want %q", got, want)
	}
}
