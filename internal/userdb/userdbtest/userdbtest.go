// Package userdbtest fakes systemd's dynamic user database for tests.
package userdbtest

import (
	"bufio"
	"encoding/json"
	"net"
	"path/filepath"
	"testing"
)

// Fake serves users (uid to name) as systemd serves its dynamic users, on a
// socket in a test directory whose path it returns.
func Fake(t *testing.T, users map[uint32]string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "io.systemd.DynamicUser")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				msg, err := bufio.NewReader(c).ReadBytes(0)
				if err != nil {
					return
				}
				var req struct {
					Method     string
					Parameters struct {
						UID     uint32 `json:"uid"`
						Service string `json:"service"`
					}
				}
				_ = json.Unmarshal(msg[:len(msg)-1], &req)
				var reply any = map[string]string{"error": "io.systemd.UserDatabase.NoRecordFound"}
				if name, ok := users[req.Parameters.UID]; ok && req.Method == "io.systemd.UserDatabase.GetUserRecord" &&
					req.Parameters.Service == "io.systemd.DynamicUser" {
					reply = map[string]any{"parameters": map[string]any{"record": map[string]any{
						"userName": name, "uid": req.Parameters.UID, "disposition": "dynamic"}, "incomplete": false}}
				}
				b, _ := json.Marshal(reply)
				_, _ = c.Write(append(b, 0))
			}()
		}
	}()
	return path
}
