// Package logging builds the process's one slog logger from the log config.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
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
// names it), no time is written: the journal stamps every line itself.
func New(w io.Writer, format string, level *slog.LevelVar) (*slog.Logger, error) {
	if err := CheckFormat(format); err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: level}
	if toJournal(w) {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	if format == FormatJSON {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
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
