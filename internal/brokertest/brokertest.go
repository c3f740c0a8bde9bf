// Package brokertest starts a real in-process broker for tests: TCP on
// 127.0.0.1 with a free port and a Unix socket in a fresh directory, closed
// when the test ends.
package brokertest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/broker"
)

// Config is the broker config Run starts from: the defaults, with TCP and
// the admin API on free loopback ports, and the socket and the store in a
// new short-named directory (socket paths are limited to 107 bytes, and
// t.TempDir's can be longer).
func Config(t testing.TB) broker.Config {
	t.Helper()
	dir, err := os.MkdirTemp("", "tq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := broker.DefaultConfig()
	cfg.Listeners.TCP.Address = "127.0.0.1:0"
	cfg.Listeners.Unix.Path = filepath.Join(dir, "mq.sock")
	cfg.Store.Dir = filepath.Join(dir, "state")
	cfg.Admin.Address = "127.0.0.1:0"
	return cfg
}

// Logger writes to stderr at the level in $TARSMQ_TEST_LOG (debug, info,
// warn, error) and discards everything when it is unset.
func Logger() *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("TARSMQ_TEST_LOG"))); err != nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// Run starts a broker from Config(t) as changed by edit (which may be nil)
// and closes it when the test ends, failing the test if Close fails or takes
// longer than 10 seconds.
func Run(t testing.TB, edit func(*broker.Config)) *broker.Broker {
	t.Helper()
	cfg := Config(t)
	if edit != nil {
		edit(&cfg)
	}
	return Start(t, cfg, Logger())
}

// Start starts a broker with cfg and log, closed when the test ends.
func Start(t testing.TB, cfg broker.Config, log *slog.Logger, opts ...broker.Option) *broker.Broker {
	t.Helper()
	b, err := broker.New(cfg, log, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("close broker: %v", err)
			if errors.Is(err, context.DeadlineExceeded) { // show where it hangs
				_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
			}
		}
	})
	return b
}

// LogBuffer collects log output safely across goroutines, for tests that
// look for a line.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
