// Package userdb finds the name of a user that /etc/passwd does not list:
// a systemd DynamicUser= service's, which PID 1 allocates while the unit
// runs and serves over Varlink (io.systemd.UserDatabase) on
// /run/systemd/userdb/io.systemd.DynamicUser. A static binary (no cgo, no
// NSS) cannot see such users through os/user.
package userdb

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// DynamicUserSocket is where systemd serves its dynamic users.
const DynamicUserSocket = "/run/systemd/userdb/io.systemd.DynamicUser"

// ErrNotFound says the service has no such user.
var ErrNotFound = errors.New("userdb: no such user")

// timeout bounds one lookup: a connection must not wait on it for long.
const timeout = 500 * time.Millisecond

// LookupUID asks the Varlink user database at socket for the name of uid.
func LookupUID(socket string, uid uint32) (string, error) {
	c, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return "", fmt.Errorf("userdb: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	req, err := json.Marshal(map[string]any{
		"method":     "io.systemd.UserDatabase.GetUserRecord",
		"parameters": map[string]any{"uid": uid, "service": "io.systemd.DynamicUser"},
	})
	if err != nil {
		return "", err
	}
	if _, err := c.Write(append(req, 0)); err != nil {
		return "", fmt.Errorf("userdb: %w", err)
	}
	msg, err := bufio.NewReader(c).ReadBytes(0)
	if err != nil {
		return "", fmt.Errorf("userdb: read reply: %w", err)
	}
	var reply struct {
		Error      string `json:"error"`
		Parameters struct {
			Record struct {
				UserName string `json:"userName"`
				UID      uint32 `json:"uid"`
			} `json:"record"`
		} `json:"parameters"`
	}
	if err := json.Unmarshal(bytes.TrimSuffix(msg, []byte{0}), &reply); err != nil {
		return "", fmt.Errorf("userdb: bad reply: %w", err)
	}
	switch {
	case reply.Error == "io.systemd.UserDatabase.NoRecordFound":
		return "", ErrNotFound
	case reply.Error != "":
		return "", fmt.Errorf("userdb: %s", reply.Error)
	case reply.Parameters.Record.UserName == "" || reply.Parameters.Record.UID != uid:
		return "", fmt.Errorf("userdb: reply has no record for uid %d", uid)
	}
	return reply.Parameters.Record.UserName, nil
}
