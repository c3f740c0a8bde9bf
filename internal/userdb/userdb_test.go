package userdb

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/tarsmq/tarsmq/internal/userdb/userdbtest"
)

func TestLookupUID(t *testing.T) {
	sock := userdbtest.Fake(t, map[uint32]string{64108: "nav"})
	if name, err := LookupUID(sock, 64108); err != nil || name != "nav" {
		t.Fatalf("LookupUID(64108) = %q, %v", name, err)
	}
	if _, err := LookupUID(sock, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown uid: %v", err)
	}
	if _, err := LookupUID(filepath.Join(t.TempDir(), "absent"), 1); err == nil {
		t.Fatal("no socket: no error")
	}
}
