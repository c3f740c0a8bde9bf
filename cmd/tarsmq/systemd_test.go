package main_test

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/hooks/contract"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
)

// notification is one datagram the service sent to NOTIFY_SOCKET.
type notification struct {
	at    time.Time
	state string
}

// fakeSystemd owns a NOTIFY_SOCKET, as systemd does for Type=notify units.
type fakeSystemd struct {
	path string
	got  chan notification
}

func newFakeSystemd(t *testing.T, dir string) *fakeSystemd {
	t.Helper()
	f := &fakeSystemd{path: filepath.Join(dir, "notify.sock"), got: make(chan notification, 1024)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: f.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(f.got)
				return
			}
			f.got <- notification{at: time.Now(), state: string(buf[:n])}
		}
	}()
	return f
}

// next returns the next notification that has field (such as "READY=1")
// among its lines, skipping the others, or fails after timeout.
func (f *fakeSystemd) next(t *testing.T, field string, timeout time.Duration) notification {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case n, ok := <-f.got:
			if !ok {
				t.Fatalf("notify socket closed while waiting for %s", field)
			}
			if slices.Contains(strings.Split(n.state, "\n"), field) {
				return n
			}
		case <-deadline:
			t.Fatalf("no %s within %v", field, timeout)
		}
	}
}

// Under a fake systemd, serve reports READY=1 once its listeners accept,
// pets the watchdog at a third of WATCHDOG_USEC, reports RELOADING=1 and
// READY=1 around a SIGHUP reload, and STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	dir, err := os.MkdirTemp("", "tqsd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sd := newFakeSystemd(t, dir)
	cfg := filepath.Join(dir, "tarsmq.yaml")
	writeFile(t, cfg, "contract:\n  exempt: [\"system/keepalive/#\"]\n")
	const watchdog = 600 * time.Millisecond
	s := startServeWith(t, dir, []string{"--config", cfg},
		[]string{"NOTIFY_SOCKET=" + sd.path, "WATCHDOG_USEC=" + strconv.FormatInt(watchdog.Microseconds(), 10)})

	ready := sd.next(t, "READY=1", 10*time.Second)
	if !strings.Contains(ready.state, "STATUS=serving on unix:"+s.socket) {
		t.Errorf("READY without the socket in STATUS: %q", ready.state)
	}
	c := mqtttest.Dial(t, "unix", s.socket, 5)
	if ack := c.Connect("sd-test", nil); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x after READY=1", ack.ReasonCode)
	}

	// The watchdog is petted every watchdog/3.
	var pets []time.Time
	for len(pets) < 7 {
		pets = append(pets, sd.next(t, "WATCHDOG=1", 5*watchdog).at)
	}
	var gaps []time.Duration
	for i := 1; i < len(pets); i++ {
		gaps = append(gaps, pets[i].Sub(pets[i-1]))
	}
	slices.Sort(gaps)
	if median := gaps[len(gaps)/2]; median < watchdog/4 || median > watchdog*5/12 {
		t.Errorf("median gap between WATCHDOG=1 is %v, want about %v (gaps %v)", median, watchdog/3, gaps)
	}

	// A message the contract refuses...
	if ack := c.Publish("raw/sensor", []byte("not an envelope"), 1, false); ack.ReasonCode != contract.CodeInvalid {
		t.Fatalf("raw message: PUBACK %#x, want %#x", ack.ReasonCode, contract.CodeInvalid)
	}
	// ...is accepted once a reload exempts its topic, with the client
	// still connected; a change that needs a restart is named.
	writeFile(t, cfg, "contract:\n  exempt: [\"system/keepalive/#\", \"raw/#\"]\nlimits:\n  max_inflight: 64\n")
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	sd.next(t, "RELOADING=1", 5*time.Second)
	sd.next(t, "READY=1", 5*time.Second)
	if ack := c.Publish("raw/sensor", []byte("not an envelope"), 1, false); ack.ReasonCode != 0 {
		t.Fatalf("after reload: PUBACK %#x, want success\n%s", ack.ReasonCode, s.log())
	}
	s.waitLog(t, `"msg":"configuration reloaded"`, `"applied":["contract.exempt"]`, `"keys":["limits.max_inflight"]`)

	// A file that does not load changes nothing and is logged.
	writeFile(t, cfg, "contract:\n  enforce: maybe\n")
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	sd.next(t, "READY=1", 5*time.Second)
	s.waitLog(t, "reload failed; the running configuration stays")
	if ack := c.Publish("raw/sensor", []byte("still exempt"), 1, false); ack.ReasonCode != 0 {
		t.Fatalf("after a failed reload: PUBACK %#x, want success", ack.ReasonCode)
	}

	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sd.next(t, "STOPPING=1", 5*time.Second)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("still running after SIGTERM\n%s", s.log())
	}
	if s.exitErr != nil {
		t.Fatalf("exit: %v\n%s", s.exitErr, s.log())
	}
}

// waitLog waits until the server's log holds every one of texts (its
// stderr arrives through a pipe, after whatever it sent elsewhere).
func (s *server) waitLog(t *testing.T, texts ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		logs, missing := s.log(), ""
		for _, text := range texts {
			if !strings.Contains(logs, text) {
				missing = text
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q not logged:\n%s", missing, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
