// Package logging builds the process's one slog logger from the log config.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
)

// Formats a logger can write.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// ParseLevel reads debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil || strings.ContainsAny(s, "+-") {
		return 0, fmt.Errorf("%q is not a log level; use debug, info, warn or error", s)
	}
	return l, nil
}

// CheckFormat accepts text or json.
func CheckFormat(s string) error {
	if s != FormatText && s != FormatJSON {
		return fmt.Errorf("%q is not a log format; use %q or %q", s, FormatText, FormatJSON)
	}
	return nil
}

// New returns a logger writing format to w at level. Level is a LevelVar so
// a reload can change it. When w is the journal (systemd's JOURNAL_STREAM
// names it), no time is written, as the journal stamps every line itself,
// and each line starts with its syslog priority ("<3>" error, "<4>" warning,
// "<6>" info, "<7>" debug), which journald reads as the entry's level.
func New(w io.Writer, format string, level *slog.LevelVar) (*slog.Logger, error) {
	if err := CheckFormat(format); err != nil {
		return nil, err
	}
	journal := toJournal(w)
	opts := &slog.HandlerOptions{Level: level}
	if journal {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	build := func(w io.Writer) slog.Handler {
		if format == FormatJSON {
			return slog.NewJSONHandler(w, opts)
		}
		return slog.NewTextHandler(w, opts)
	}
	if journal {
		return slog.New(newPriorityHandler(w, build)), nil
	}
	return slog.New(build(w)), nil
}

// priorityHandler writes each record as one line that starts with its
// syslog priority. Its derived handlers (WithAttrs, WithGroup) share the
// buffer and lock.
type priorityHandler struct {
	inner slog.Handler
	out   *lineBuffer
}

// lineBuffer collects one line for the inner handler to write into.
type lineBuffer struct {
	mu  sync.Mutex
	buf []byte
	w   io.Writer
}

func (l *lineBuffer) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	return len(p), nil
}

func newPriorityHandler(w io.Writer, build func(io.Writer) slog.Handler) *priorityHandler {
	out := &lineBuffer{w: w}
	return &priorityHandler{inner: build(out), out: out}
}

func (h *priorityHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *priorityHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.buf = append(h.out.buf[:0], Priority(r.Level)...)
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	_, err := h.out.w.Write(h.out.buf)
	return err
}

func (h *priorityHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &priorityHandler{inner: h.inner.WithAttrs(as), out: h.out}
}

func (h *priorityHandler) WithGroup(name string) slog.Handler {
	return &priorityHandler{inner: h.inner.WithGroup(name), out: h.out}
}

// Priority is the syslog priority prefix journald reads for a level.
func Priority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	default:
		return "<7>"
	}
}

// toJournal reports whether w is the stream systemd connected to the journal:
// JOURNAL_STREAM holds its device and inode.
func toJournal(w io.Writer) bool {
	js := os.Getenv("JOURNAL_STREAM")
	f, ok := w.(*os.File)
	if js == "" || !ok {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return js == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}
