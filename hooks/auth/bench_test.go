package auth

import (
	"fmt"
	"testing"

	"github.com/tarsmq/tarsmq/internal/acl"
	"github.com/tarsmq/tarsmq/internal/peercred"
)

// benchPolicy maps ten identities, as a robot's config would: nine service
// users by numeric uid (1001..1009, so that no /etc/passwd lookup is made),
// some with their own client ids, then a group of tools (gid 2000). Every
// identity has a name, so resolving one looks nothing up either.
func benchPolicy(b *testing.B) *policy {
	b.Helper()
	c := Config{Socket: SocketPeerCred, ACL: acl.Config{Default: acl.Deny}}
	for i := range 9 {
		id := Identity{User: fmt.Sprint(1001 + i), Name: fmt.Sprintf("svc%d", i)}
		if i%2 == 1 {
			id.ClientIDs = []string{fmt.Sprintf("svc%d", i), fmt.Sprintf("svc%d-*", i)}
		}
		c.Identities = append(c.Identities, id)
	}
	c.Identities = append(c.Identities, Identity{Group: "2000", Name: "tools", ClientIDs: []string{"*-cli"}})
	p, err := c.compile()
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkResolve maps a socket peer to its identity, as every CONNECT on
// the Unix socket does under auth.socket: peercred: the first identity, the
// last user, the group (reached after every user) and a peer nobody maps.
func BenchmarkResolve(b *testing.B) {
	p := benchPolicy(b)
	for _, c := range []struct {
		name string
		cred peercred.Cred
		want string
	}{
		{"first", peercred.Cred{UID: 1001, GID: 1001}, "svc0"},
		{"ninth", peercred.Cred{UID: 1009, GID: 1009}, "svc8"},
		{"group", peercred.Cred{UID: 3000, GID: 3000, Groups: []uint32{27, 29, 2000}}, "tools"},
		{"unmapped", peercred.Cred{UID: 4000, GID: 4000, Groups: []uint32{27, 29}}, ""},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if name, _, _ := p.resolve(c.cred, noNames); name != c.want {
					b.Fatalf("resolved %q, want %q", name, c.want)
				}
			}
		})
	}
}

// BenchmarkGlobMatch matches client ids against identities' client_ids
// patterns, as every CONNECT of a mapped peer does.
func BenchmarkGlobMatch(b *testing.B) {
	for _, c := range []struct {
		name, pattern, s string
		want             bool
	}{
		{"exact", "stt-worker", "stt-worker", true},
		{"suffix", "stt-worker:*", "stt-worker:7f3a9c", true},
		{"prefix", "*-cli", "nav-cli", true},
		{"middle", "robot-*-arm-*", "robot-1-arm-left", true},
		{"miss", "stt-worker:*", "tts-worker:7f3a9c", false},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if globMatch(c.pattern, c.s) != c.want {
					b.Fatalf("globMatch(%q, %q) != %v", c.pattern, c.s, c.want)
				}
			}
		})
	}
	// The default client ids of an identity (name, name:*) against a
	// client id with a suffix: what OnConnect checks.
	b.Run("anyMatch/default", func(b *testing.B) {
		ids := []string{"stt-worker", "stt-worker:*"}
		b.ReportAllocs()
		for b.Loop() {
			if !anyMatch(ids, "stt-worker:7f3a9c") {
				b.Fatal("no match")
			}
		}
	})
}
