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
	lv := new(slog.LevelVar)
	lv.Set(slog.LevelDebug)
	log, _ := New(f, FormatText, lv)
	log.Info("to the journal")
	log.With("component", "x").Warn("careful", "k", 1)
	log.Error("bad")
	log.Debug("detail")
	data, _ := os.ReadFile(f.Name())
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	want := []string{
		`<6>level=INFO msg="to the journal"`,
		`<4>level=WARN msg=careful component=x k=1`,
		`<3>level=ERROR msg=bad`,
		`<7>level=DEBUG msg=detail`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("journal lines:\n%s\nwant:\n%s", data, strings.Join(want, "\n"))
	}
	var buf bytes.Buffer
	plain, _ := New(&buf, FormatText, new(slog.LevelVar))
	plain.Info("elsewhere")
	if !strings.Contains(buf.String(), "time=") {
		t.Fatalf("non-journal line has no time: %s", buf.String())
	}
}
