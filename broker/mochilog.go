package broker

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// mochiLog adapts our logger for mochi: its Info lines (hooks added, listener
// attached, server started) become Debug because the broker logs its own
// lifecycle once, and each distinct Warn or Error message is written at most
// once per window with a count of what was suppressed, because mochi logs
// some faults once per packet.
type mochiLog struct {
	slog.Handler
	limit *warnLimiter
}

func newMochiLogger(log *slog.Logger) *slog.Logger {
	return slog.New(&mochiLog{
		Handler: log.Handler(),
		limit:   &warnLimiter{window: 10 * time.Second, seen: map[string]*warnState{}},
	})
}

func (h *mochiLog) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, demote(l))
}

func (h *mochiLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		suppressed, ok := h.limit.allow(r.Message, r.Time)
		if !ok {
			return nil
		}
		if suppressed > 0 {
			r.AddAttrs(slog.Int("suppressed", suppressed))
		}
	}
	r.Level = demote(r.Level)
	return h.Handler.Handle(ctx, r)
}

func (h *mochiLog) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &mochiLog{Handler: h.Handler.WithAttrs(attrs), limit: h.limit}
}

func (h *mochiLog) WithGroup(name string) slog.Handler {
	return &mochiLog{Handler: h.Handler.WithGroup(name), limit: h.limit}
}

func demote(l slog.Level) slog.Level {
	if l == slog.LevelInfo {
		return slog.LevelDebug
	}
	return l
}

// warnLimiter lets each message through once per window.
type warnLimiter struct {
	window time.Duration
	mu     sync.Mutex
	seen   map[string]*warnState
}

type warnState struct {
	last       time.Time
	suppressed int
}

// allow reports whether msg may be logged now, and how many were suppressed
// since it last was.
func (w *warnLimiter) allow(msg string, now time.Time) (int, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.seen[msg]
	if s == nil {
		if len(w.seen) > 1000 { // mochi's messages are constants; bound it anyway
			clear(w.seen)
		}
		s = &warnState{}
		w.seen[msg] = s
	}
	if !s.last.IsZero() && now.Sub(s.last) < w.window {
		s.suppressed++
		return 0, false
	}
	n := s.suppressed
	s.last, s.suppressed = now, 0
	return n, true
}
