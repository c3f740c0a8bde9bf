package auth

import (
	"strings"
	"testing"

	"github.com/tarsmq/tarsmq/internal/acl"
	"github.com/tarsmq/tarsmq/internal/peercred"
)

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"stt", "stt", true}, {"stt", "stt2", false}, {"stt:*", "stt:1", true}, {"stt:*", "stt", false},
		{"stt:*", "stt-worker", false}, {"*", "", true}, {"a*b*c", "abc", true}, {"a*b*c", "axxbyyc", true},
		{"a*a", "a", false}, {"*-cli", "nav-cli", true}, {"*-cli", "nav-cli2", false},
	} {
		if got := globMatch(tc.pattern, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v", tc.pattern, tc.s, got)
		}
	}
}

// Every mistake is named by its key, all at once.
func TestValidateNamesTheKey(t *testing.T) {
	c := Config{Socket: "kernel", AllowAnonymous: "maybe",
		Identities:   []Identity{{User: "a", Group: "b"}, {}, {User: "0", Name: "bad name"}, {Group: "0", ClientIDs: []string{""}}},
		PasswordFile: "/nonexistent/passwd", ACL: acl.Config{Default: "sometimes"}}
	err := c.Validate()
	for _, want := range []string{"auth.socket:", "auth.allow_anonymous:", "auth.identities[0]: set user or group, not both",
		"auth.identities[1]: set user", "auth.identities[2]: name", "auth.identities[3]: client_ids[0]",
		"auth.password_file:", "auth.acl.default:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q missing from:\n%v", want, err)
		}
	}
	if err := (Config{Socket: SocketPeerCred, ACL: acl.Config{Default: acl.Deny}}).Validate(); err == nil ||
		!strings.Contains(err.Error(), "auth.identities: socket is peercred but no identity") {
		t.Errorf("peercred without identities: %v", err)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("default: %v", err)
	}
}

// A user or group the machine does not know is no error: it is named, and
// matches nobody until it exists.
func TestUnknownIdentities(t *testing.T) {
	c := Config{Socket: SocketPeerCred, ACL: acl.Config{Default: acl.Deny},
		Identities: []Identity{{Group: "no-such-group-tarsmq"}, {User: "1001", Name: "stt"}}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.Unknown(); len(got) != 1 || got[0] != "group no-such-group-tarsmq" {
		t.Fatalf("Unknown() = %v", got)
	}
	p, err := c.compile()
	if err != nil {
		t.Fatal(err)
	}
	if name, ids, ok := p.resolve(peercred.Cred{UID: 1001, GID: 5}, noNames); !ok || name != "stt" || strings.Join(ids, ",") != "stt,stt:*" {
		t.Fatalf("uid 1001: %q %v %v", name, ids, ok)
	}
	if _, _, ok := p.resolve(peercred.Cred{UID: 1002, GID: 5, Groups: []uint32{7}}, noNames); ok {
		t.Fatal("an unknown group matched")
	}
}

func TestToggle(t *testing.T) {
	for _, tc := range []struct {
		t        Toggle
		def, out bool
	}{{"", true, true}, {"", false, false}, {ToggleAuto, false, false}, {ToggleTrue, false, true}, {ToggleFalse, true, false}} {
		if got := tc.t.Resolve(tc.def); got != tc.out {
			t.Errorf("%q.Resolve(%v) = %v", tc.t, tc.def, got)
		}
	}
}

// noNames names every uid by number, as a machine without the user would.
func noNames(uid uint32) string { return UserName(uid, "") }
