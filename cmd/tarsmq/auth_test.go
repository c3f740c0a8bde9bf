package main_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// runAs runs tarsmq with args as uid (and the same gid), as another
// service on the device would.
func runAs(t *testing.T, uid uint32, args ...string) (stderr string, code int) {
	t.Helper()
	cmd := exec.Command(tarsmq, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, NoSetGroups: true}}
	_, stderr, code = runCmd(t, cmd)
	return stderr, code
}

// Real processes under real uids on the socket (auth.socket: peercred):
// each is its mapped identity and nothing more, and an unmapped uid is
// refused with the reason. Needs root to start the clients as other users;
// broker/auth_test.go covers the same ground with credentials it plays.
func TestPeerCredRealUIDs(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run clients under other uids")
	}
	dir, err := os.MkdirTemp("", "tqauth")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, d := range []string{dir, filepath.Dir(tarsmq)} { // let the other users reach the socket and the binary
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "tarsmq.yaml")
	writeFile(t, cfg, `
listeners:
  unix:
    mode: "0666"
auth:
  socket: peercred
  identities:
    - {user: "65534", name: svc-a}
    - {user: "65533", name: svc-b}
  acl:
    default: deny
    rules:
      - {who: "*", write: ["system/health/%u", "%u/#"], read: ["#"]}
`)
	s := startServeWith(t, dir, []string{"--config", cfg}, nil)
	url := "unix://" + s.socket
	pub := func(uid uint32, id, topic string) (string, int) {
		return runAs(t, uid, "pub", "--url", url, "--id", id, "-t", topic, "--type", "health.status", "-d", `{"ok":true}`, "-q", "1", "-r")
	}
	if out, code := pub(65534, "svc-a", "system/health/svc-a"); code != 0 {
		t.Fatalf("svc-a's own health: exit %d\n%s\n%s", code, out, s.log())
	}
	// A user without write permission on the socket is told at once,
	// with the fix, instead of retrying.
	private := filepath.Join(dir, "private.sock")
	ln, err := net.Listen("unix", private)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(private, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runAs(t, 65534, "pub", "--url", "unix://"+private, "--id", "svc-a", "-t", "x", "--type", "a.b")
	if code == 0 || !strings.Contains(out, "must be in the socket's group") { // the message of the no-retry path
		t.Errorf("no permission on the socket: exit %d:\n%s", code, out)
	}

	for _, tc := range []struct {
		uid       uint32
		id, topic string
		want      string
	}{
		{65533, "svc-b", "system/health/svc-a", "not authorized"},           // another's health
		{65533, "svc-a", "system/health/svc-b", `client id "svc-a" is not`}, // another's client id
		{65532, "svc-c", "system/health/svc-c", "is not mapped"},            // nobody mapped this uid
	} {
		out, code := pub(tc.uid, tc.id, tc.topic)
		if code == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("uid %d as %s on %s: exit %d, want an error with %q:\n%s", tc.uid, tc.id, tc.topic, code, tc.want, out)
		}
	}
}
