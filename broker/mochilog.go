package broker

import (
	"context"
	"log/slog"
	"time"

	"github.com/tarsmq/tarsmq/internal/lograte"
)

// mochiLog adapts our logger for mochi: its Info lines (hooks added, listener
// attached, server started) become Debug because the broker logs its own
// lifecycle once, and each distinct Warn or Error message is written at most
// once per window with a count of what was suppressed, because mochi logs
// some faults once per packet.
type mochiLog struct {
	slog.Handler
	limit *lograte.Limiter
}

func newMochiLogger(log *slog.Logger) *slog.Logger {
	return slog.New(&mochiLog{Handler: log.Handler(), limit: lograte.New(10 * time.Second)})
}

func (h *mochiLog) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, demote(l))
}

func (h *mochiLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		suppressed, ok := h.limit.Allow(r.Message, r.Time)
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
