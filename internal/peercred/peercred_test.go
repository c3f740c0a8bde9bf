package peercred

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// The kernel names this very process as the peer of its own connection.
func TestReadOwnConnection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.UnixConn, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	defer server.Close()

	cred, err := Read(server)
	if err != nil {
		t.Fatal(err)
	}
	if cred.PID != int32(os.Getpid()) || cred.UID != uint32(os.Getuid()) || cred.GID != uint32(os.Getgid()) {
		t.Fatalf("cred %+v, want pid %d uid %d gid %d", cred, os.Getpid(), os.Getuid(), os.Getgid())
	}
	groups, _ := os.Getgroups()
	for _, g := range groups {
		if !cred.InGroup(uint32(g)) {
			t.Errorf("supplementary group %d missing from %v", g, cred.Groups)
		}
	}
	if cred.InGroup(4242424) {
		t.Error("in a group it is not in")
	}
}
