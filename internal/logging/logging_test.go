package logging

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestLevelsAndFormats(t *testing.T) {
	for _, s := range []string{"debug", "info", "warn", "error", "INFO"} {
		if _, err := ParseLevel(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"", "verbose", "info+2"} {
		if _, err := ParseLevel(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	var buf bytes.Buffer
	lv := new(slog.LevelVar)
	lv.Set(slog.LevelWarn)
	log, err := New(&buf, FormatJSON, lv)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown", "k", 1)
	if strings.Contains(buf.String(), "hidden") || !strings.Contains(buf.String(), `"msg":"shown"`) {
		t.Fatalf("got %s", buf.String())
	}
	if _, err := New(&buf, "xml", lv); err == nil {
		t.Fatal("xml format accepted")
	}
}

// Under journald (JOURNAL_STREAM names the output's device and inode) the
// time key is left out; elsewhere it is written.
func TestNoTimeUnderJournald(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	log, _ := New(f, FormatText, new(slog.LevelVar))
	log.Info("to the journal")
	data, _ := os.ReadFile(f.Name())
	if strings.Contains(string(data), "time=") || !strings.Contains(string(data), "to the journal") {
		t.Fatalf("journal line: %s", data)
	}
	var buf bytes.Buffer
	plain, _ := New(&buf, FormatText, new(slog.LevelVar))
	plain.Info("elsewhere")
	if !strings.Contains(buf.String(), "time=") {
		t.Fatalf("non-journal line has no time: %s", buf.String())
	}
}
