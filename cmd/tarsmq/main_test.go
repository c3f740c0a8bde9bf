package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tarsmq is the binary under test, built once by TestMain.
var tarsmq string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tarsmq-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tarsmq = filepath.Join(dir, "tarsmq")
	if out, err := exec.Command("go", "build", "-o", tarsmq, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build tarsmq: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needTool skips a test when a command is missing, except in CI, where
// .ci/run installs it and its absence is a failure.
func needTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing in CI: .ci/run must install it", name)
		}
		t.Skipf("%s not installed (apt-get install mosquitto-clients)", name)
	}
}

// run runs tarsmq with args and env added to the test's environment.
func run(t testing.TB, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(tarsmq, args...)
	cmd.Env = append(os.Environ(), env...)
	return runCmd(t, cmd)
}

// runCmd runs cmd, a tarsmq command set up as a test needs, and returns
// its output and exit code.
func runCmd(t testing.TB, cmd *exec.Cmd) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

// server is a running `tarsmq serve`.
type server struct {
	cmd     *exec.Cmd
	dir     string // socket and store
	tcp     string // host:port
	admin   string // host:port
	socket  string
	mu      sync.Mutex
	stderr  bytes.Buffer
	exited  chan struct{}
	exitErr error
}

// startServe runs `tarsmq serve` in a new directory.
func startServe(t testing.TB) *server {
	t.Helper()
	dir, err := os.MkdirTemp("", "tqcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return startServeIn(t, dir)
}

// env is the environment for tarsmq commands on dir's socket and store,
// with the given admin address.
func serveEnv(dir, admin string) []string {
	return append(os.Environ(),
		"TARSMQ_CONFIG=",
		"TARSMQ_LISTENERS_TCP_ADDRESS=127.0.0.1:0",
		"TARSMQ_LISTENERS_UNIX_PATH="+filepath.Join(dir, "mq.sock"),
		"TARSMQ_STORE_DIR="+filepath.Join(dir, "state"),
		"TARSMQ_ADMIN_ADDRESS="+admin,
		"TARSMQ_LOG_FORMAT=json",
	)
}

// startServeIn runs `tarsmq serve` on dir's socket and store, and waits
// until it has logged its TCP and admin addresses.
func startServeIn(t testing.TB, dir string) *server {
	t.Helper()
	return startServeWith(t, dir, nil, nil)
}

// startServeWith is startServeIn with more arguments to serve and more
// environment variables.
func startServeWith(t testing.TB, dir string, args, env []string) *server {
	t.Helper()
	s := &server{dir: dir, socket: filepath.Join(dir, "mq.sock"), exited: make(chan struct{})}
	s.cmd = exec.Command(tarsmq, append([]string{"serve"}, args...)...)
	s.cmd.Env = append(serveEnv(dir, "127.0.0.1:0"), env...)
	pipe, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			s.mu.Lock()
			s.stderr.Write(append(sc.Bytes(), '\n'))
			var line struct{ Msg, Listener, Address string }
			if json.Unmarshal(sc.Bytes(), &line) == nil {
				switch {
				case line.Msg == "listening" && line.Listener == "tcp":
					s.tcp = line.Address
				case line.Msg == "listening" && line.Listener == "admin":
					s.admin = line.Address
				case line.Msg == "tarsmq started":
					close(started)
				}
			}
			s.mu.Unlock()
		}
		s.exitErr = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
	})
	select {
	case <-started:
	case <-s.exited:
		t.Fatalf("tarsmq serve exited: %v\n%s", s.exitErr, s.log())
	case <-time.After(10 * time.Second):
		t.Fatalf("tarsmq serve did not start\n%s", s.log())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s
}

// stop sends sig and waits up to a second for the exit.
func (s *server) stop(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.exited:
	case <-time.After(time.Second):
		t.Fatalf("still running a second after %v\n%s", sig, s.log())
	}
}

func (s *server) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// roundTrip runs mosquitto_sub for one message and publishes an envelope
// from client id "cli" with mosquitto_pub until the subscriber has it (it may
// not have subscribed yet when the first publish goes out).
func roundTrip(t *testing.T, conn []string, topic, text string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sub := exec.CommandContext(ctx, "mosquitto_sub", append(conn, "-t", topic, "-C", "1", "-q", "1")...)
	var out bytes.Buffer
	sub.Stdout, sub.Stderr = &out, &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sub.Wait() }()
	msg := fmt.Sprintf(`{"id":"cli-1","type":"cli.test","ts":1729123456.5,"source":"cli","data":{"text":%q}}`, text)
	for {
		pub := exec.CommandContext(ctx, "mosquitto_pub", append(conn, "-i", "cli", "-t", topic, "-m", msg, "-q", "1")...)
		if b, err := pub.CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub %v: %v %s", conn, err, b)
		}
		select {
		case err := <-done:
			if err != nil || strings.TrimSpace(out.String()) != msg {
				t.Fatalf("mosquitto_sub %v: %v, got %q", conn, err, out.String())
			}
			return
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("mosquitto_sub %v got nothing", conn)
		}
	}
}

func TestServeWithMosquittoClientsAndSIGTERM(t *testing.T) {
	needTool(t, "mosquitto_pub")
	needTool(t, "mosquitto_sub")
	s := startServe(t)
	host, port, _ := strings.Cut(s.tcp, ":")
	for _, v := range []string{"mqttv311", "mqttv5"} {
		roundTrip(t, []string{"-V", v, "-h", host, "-p", port}, "tcp/"+v, "over tcp "+v)
		roundTrip(t, []string{"-V", v, "--unix", s.socket}, "unix/"+v, "over the socket "+v)
	}
	// A plain text message breaks the envelope contract: an MQTT 5
	// publisher is told why.
	out, _ := exec.Command("mosquitto_pub", "-V", "mqttv5", "-h", host, "-p", port, "-i", "cli", "-t", "tcp/plain", "-m", "hello", "-q", "1", "-d").CombinedOutput()
	if !strings.Contains(string(out), "RC:153") || !strings.Contains(string(out), "not valid JSON") {
		t.Errorf("plain text publish was not refused with 0x99 and a reason:\n%s", out)
	}

	if strings.Count(s.log(), `"msg":"listening"`) != 3 {
		t.Errorf("want one listening line per listener:\n%s", s.log())
	}
	s.stop(t, syscall.SIGTERM)
	if s.exitErr != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", s.exitErr, s.log())
	}
	if _, err := os.Lstat(s.socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind after exit: %v", err)
	}
}

func TestConfigCommand(t *testing.T) {
	out, _, code := run(t, []string{"TARSMQ_CONFIG=", "TARSMQ_LOG_LEVEL=debug"}, "config")
	if code != 0 || !strings.Contains(out, "level: debug") || !strings.Contains(out, "address: 127.0.0.1:1883") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	_, errOut, code := run(t, []string{"TARSMQ_CONFIG=", "TARSMQ_LISTENERS_TCP_ADDRESS=0.0.0.0:1883", "TARSMQ_LOG_FORMAT=xml"}, "config")
	if code != 1 || !strings.Contains(errOut, "listeners.tcp.address:") || !strings.Contains(errOut, "log.format:") {
		t.Fatalf("invalid config: exit %d:\n%s", code, errOut)
	}
	_, errOut, code = run(t, []string{"TARSMQ_CONFIG="}, "config", "--config", "/nonexistent/tarsmq.yaml")
	if code != 1 || !strings.Contains(errOut, "/nonexistent/tarsmq.yaml") {
		t.Fatalf("missing file: exit %d:\n%s", code, errOut)
	}
}

// The shipped example config is what the defaults are, and valid.
func TestExampleConfigIsValid(t *testing.T) {
	out, errOut, code := run(t, []string{"TARSMQ_CONFIG="}, "config", "--config", "../../configs/tarsmq.yaml")
	if code != 0 {
		t.Fatalf("configs/tarsmq.yaml: exit %d: %s", code, errOut)
	}
	for _, key := range []string{"unix:", "tcp:", "websocket:", "store:", "log:"} {
		if !strings.Contains(out, key) {
			t.Errorf("%s missing from the effective config", key)
		}
	}
}

func TestServeRefusesInvalidConfig(t *testing.T) {
	_, errOut, code := run(t, []string{"TARSMQ_CONFIG=", "TARSMQ_SLOW_SUBSCRIBER_POLICY=wait"}, "serve")
	if code != 1 || !strings.Contains(errOut, "slow_subscriber.policy:") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}} {
		out, _, code := run(t, nil, args...)
		if code != 0 || !strings.Contains(out, "serve") || !strings.Contains(out, "config") {
			t.Errorf("%v: exit %d\n%s", args, code, out)
		}
	}
	for cmd, want := range map[string]string{"serve": "SIGTERM", "config": "TARSMQ_LISTENERS_TCP_ADDRESS", "version": "version"} {
		out, errOut, code := run(t, nil, cmd, "--help")
		if code != 0 || !strings.Contains(out+errOut, want) {
			t.Errorf("%s --help: exit %d, want %q in\n%s%s", cmd, code, want, out, errOut)
		}
	}
	out, _, code := run(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "tarsmq ") || !strings.Contains(out, "commit") {
		t.Errorf("version: exit %d %q", code, out)
	}
	_, errOut, code := run(t, nil, "frobnicate")
	if code != 1 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d %q", code, errOut)
	}
}
