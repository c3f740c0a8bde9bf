package broker_test

import (
	"encoding/json"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/tarsmq/tarsmq/admin"
	"github.com/tarsmq/tarsmq/broker"
	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/hooks/auth"
	"github.com/tarsmq/tarsmq/internal/acl"
	"github.com/tarsmq/tarsmq/internal/brokertest"
	"github.com/tarsmq/tarsmq/internal/mqtttest"
	"github.com/tarsmq/tarsmq/internal/passwd"
	"github.com/tarsmq/tarsmq/internal/peercred"
	"github.com/tarsmq/tarsmq/internal/userdb/userdbtest"
)

// playUsers makes the broker see each new Unix socket connection as the
// next credential sent on the returned channel (the test dials one at a
// time), and as this process when none is waiting.
func playUsers(t *testing.T, edit func(*broker.Config), opts ...broker.Option) (*broker.Broker, chan<- peercred.Cred) {
	t.Helper()
	next := make(chan peercred.Cred, 8)
	cfg := brokertest.Config(t)
	if edit != nil {
		edit(&cfg)
	}
	opts = append(opts, broker.WithPeerCred(func(c net.Conn) (*peercred.Cred, error) {
		select {
		case cr := <-next:
			return &cr, nil
		default:
			cr, err := peercred.Read(c.(*net.UnixConn))
			return &cr, err
		}
	}))
	b := brokertest.Start(t, cfg, brokertest.Logger(), opts...)
	return b, next
}

// robotACL: every service writes its own health and its own topics, and
// reads the system topics and its own; tts has secrets of its own.
var robotACL = acl.Config{Default: acl.Deny, Rules: []acl.Rule{
	{Who: acl.Everyone, Write: []string{"system/health/%u", "%u/#"}, Read: []string{"system/#", "%u/#"}},
	{Who: "tts", Write: []string{"secrets/tts/#"}, Read: []string{"secrets/tts/#"}},
}}

// connack connects and returns the CONNACK.
func connack(t *testing.T, network, addr string, version byte, id string, edit func(*packets.Packet)) (*mqtttest.Client, packets.Packet) {
	t.Helper()
	c := mqtttest.Dial(t, network, addr, version)
	return c, c.Connect(id, edit)
}

// Two services under different uids: each is known by the identity its uid
// maps to, whatever username it claims; one cannot publish the other's
// health, read what the ACL keeps from it, or take its client id.
func TestTwoServicesUnderDifferentUIDs(t *testing.T) {
	b, as := playUsers(t, func(c *broker.Config) {
		c.Auth.Socket = auth.SocketPeerCred
		c.Auth.Identities = []auth.Identity{{User: "1001", Name: "stt"}, {User: "1002", Name: "tts"}}
		c.Auth.ACL = robotACL
	})
	sock := b.SocketPath()

	as <- peercred.Cred{UID: 1002, GID: 1002, PID: 42}
	tts, ack := connack(t, "unix", sock, mqtttest.V5, "tts", nil)
	if ack.ReasonCode != 0 {
		t.Fatalf("tts refused: %#x %s", ack.ReasonCode, ack.Properties.ReasonString)
	}
	as <- peercred.Cred{UID: 1001, GID: 1001, PID: 41}
	stt, ack := connack(t, "unix", sock, mqtttest.V5, "stt", func(pk *packets.Packet) {
		pk.Connect.Username, pk.Connect.UsernameFlag = []byte("tts"), true // claims to be tts
	})
	if ack.ReasonCode != 0 {
		t.Fatalf("stt refused: %#x %s", ack.ReasonCode, ack.Properties.ReasonString)
	}
	if got := tts.Subscribe("secrets/tts/#", 1); got.ReasonCodes[0] != 1 {
		t.Fatalf("tts may read its secrets: SUBACK %#x", got.ReasonCodes[0])
	}
	if got := stt.Subscribe("secrets/#", 1); got.ReasonCodes[0] != packets.ErrNotAuthorized.Code {
		t.Fatalf("stt subscribed to secrets/#: SUBACK %#x", got.ReasonCodes[0])
	}
	stt.Subscribe("#", 1) // allowed, but never delivers a secret

	// stt cannot publish tts's health: the claimed username did not help.
	health := envHealth("tts")
	if got := stt.Publish(envelope.HealthTopic("tts"), health, 1, true); got.ReasonCode != packets.ErrNotAuthorized.Code ||
		!strings.Contains(got.Properties.ReasonString, "auth.acl") {
		t.Fatalf("stt published tts's health: %#x %q", got.ReasonCode, got.Properties.ReasonString)
	}
	notRetainedOn(t, b, envelope.HealthTopic("tts"))
	if got := tts.Publish(envelope.HealthTopic("tts"), health, 1, true); got.ReasonCode != 0 {
		t.Fatalf("tts's own health: %#x %q", got.ReasonCode, got.Properties.ReasonString)
	}
	secret := []byte(envFrom("tts", "key"))
	if got := tts.Publish("secrets/tts/key", secret, 1, true); got.ReasonCode != 0 {
		t.Fatalf("tts's secret: %#x %q", got.ReasonCode, got.Properties.ReasonString)
	}
	// tts gets its secret; stt gets the health, never the secret, and no
	// retained secret when it subscribes again.
	tts.Ack(tts.Expect(packets.Publish, 0))
	pk := stt.Expect(packets.Publish, 0)
	stt.Ack(pk)
	if pk.TopicName != envelope.HealthTopic("tts") {
		t.Fatalf("stt got %s", pk.TopicName)
	}
	if got := stt.Subscribe("secrets/tts/+", 1); got.ReasonCodes[0] != packets.ErrNotAuthorized.Code {
		t.Fatalf("stt subscribed to secrets/tts/+: SUBACK %#x", got.ReasonCodes[0])
	}
	if got, err := stt.Next(packets.Publish, 0, 300e6); err == nil {
		t.Fatalf("stt read %s", got.TopicName)
	}

	// Nobody takes stt's client id, and a uid nobody mapped is refused;
	// both say why.
	as <- peercred.Cred{UID: 1002, GID: 1002, PID: 43}
	if _, ack := connack(t, "unix", sock, mqtttest.V5, "stt", nil); ack.ReasonCode != packets.ErrClientIdentifierNotValid.Code ||
		!strings.Contains(ack.Properties.ReasonString, `"stt" is not one of tts's`) {
		t.Fatalf("tts as client id stt: %#x %q", ack.ReasonCode, ack.Properties.ReasonString)
	}
	if got := stt.Publish("stt/alive", []byte(envFrom("stt", "still here")), 1, false); got.ReasonCode != 0 {
		t.Fatalf("stt lost its session to the refused takeover: %#x", got.ReasonCode)
	}
	as <- peercred.Cred{UID: 1005, GID: 1005, PID: 44}
	if _, ack := connack(t, "unix", sock, mqtttest.V5, "intruder", nil); ack.ReasonCode != packets.ErrNotAuthorized.Code ||
		!strings.Contains(ack.Properties.ReasonString, "uid 1005 (pid 44) is not mapped") {
		t.Fatalf("unmapped uid: %#x %q", ack.ReasonCode, ack.Properties.ReasonString)
	}
	as <- peercred.Cred{UID: 1005, GID: 1005}
	if _, ack := connack(t, "unix", sock, mqtttest.V311, "intruder", nil); ack.ReasonCode != packets.Err3NotAuthorized.Code {
		t.Fatalf("unmapped uid over 3.1.1: return code %#x, want 0x05", ack.ReasonCode)
	}
	// An MQTT 5 client without a client id is given one of its own.
	as <- peercred.Cred{UID: 1001, GID: 1001}
	if _, ack := connack(t, "unix", sock, mqtttest.V5, "", nil); ack.ReasonCode != 0 ||
		!strings.HasPrefix(ack.Properties.AssignedClientID, "stt:") {
		t.Fatalf("empty client id: %#x, assigned %q", ack.ReasonCode, ack.Properties.AssignedClientID)
	}
	// The admin API lists who is who.
	code, body := get(t, b, "/v1/clients")
	var list struct{ Clients []admin.Client }
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil {
		t.Fatalf("/v1/clients: %d %v\n%s", code, err, body)
	}
	found := false
	for _, c := range list.Clients {
		if c.ID == "stt" {
			found = c.Identity == "stt" && c.UID != nil && *c.UID == 1001 && c.Listener == "unix" && c.Subscriptions == 1
		}
	}
	if !found {
		t.Fatalf("stt not listed as uid 1001 with its subscription:\n%s", body)
	}
	if n := b.Auth().Refusals(); n[auth.RefusedClientID] != 1 || n[auth.RefusedUnknownUID] != 2 {
		t.Fatalf("refusals %v", n)
	}
	if n := b.Auth().Denials(); n["publish"] != 1 || n["subscribe"] != 2 {
		t.Fatalf("denials %v", n)
	}
}

// A systemd DynamicUser= service, whose uid /etc/passwd does not know, is
// known by the name systemd gave it (its unit's), not by its number.
func TestDynamicUserNamedBySystemd(t *testing.T) {
	db := userdbtest.Fake(t, map[uint32]string{64108: "nav"})
	b, as := playUsers(t, func(c *broker.Config) {
		c.Auth.Socket = auth.SocketPeerCred
		c.Auth.Identities = []auth.Identity{{Group: "995"}}
		c.Auth.ACL = robotACL
	}, broker.WithUserDB(db))
	as <- peercred.Cred{UID: 64108, GID: 64108, Groups: []uint32{995}}
	c, ack := connack(t, "unix", b.SocketPath(), mqtttest.V5, "nav", nil)
	if ack.ReasonCode != 0 {
		t.Fatalf("DynamicUser nav refused: %#x %q", ack.ReasonCode, ack.Properties.ReasonString)
	}
	if got := c.Publish(envelope.HealthTopic("nav"), envHealth("nav"), 1, true); got.ReasonCode != 0 {
		t.Fatalf("nav's health: %#x %q", got.ReasonCode, got.Properties.ReasonString)
	}
	as <- peercred.Cred{UID: 64109, GID: 64109, Groups: []uint32{995}} // not in the database either
	if _, ack := connack(t, "unix", b.SocketPath(), mqtttest.V5, "ghost", nil); ack.ReasonCode != packets.ErrClientIdentifierNotValid.Code ||
		!strings.Contains(ack.Properties.ReasonString, "uid-64109") {
		t.Fatalf("nameless uid: %#x %q", ack.ReasonCode, ack.Properties.ReasonString)
	}
}

// The kernel's own answer: this process's uid, mapped by group, connects as
// its user name; a will to another's topic is refused.
func TestSocketIdentityFromKernel(t *testing.T) {
	b := brokertest.Run(t, func(c *broker.Config) {
		c.Auth.Socket = auth.SocketPeerCred
		c.Auth.Identities = []auth.Identity{{Group: itoa(os.Getgid())}}
		c.Auth.ACL = robotACL
	})
	me := userNameOf(t)
	c, ack := connack(t, "unix", b.SocketPath(), mqtttest.V5, me, nil)
	if ack.ReasonCode != 0 {
		t.Fatalf("refused: %#x %q", ack.ReasonCode, ack.Properties.ReasonString)
	}
	if got := c.Publish(envelope.HealthTopic(me), envHealth(me), 1, true); got.ReasonCode != 0 {
		t.Fatalf("own health as %s: %#x %q", me, got.ReasonCode, got.Properties.ReasonString)
	}
	_, ack = connack(t, "unix", b.SocketPath(), mqtttest.V5, me+":2", func(pk *packets.Packet) {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, envelope.HealthTopic("someone-else"), envHealth("someone-else")
	})
	if ack.ReasonCode != packets.ErrNotAuthorized.Code || !strings.Contains(ack.Properties.ReasonString, "will topic") {
		t.Fatalf("will to another's health: %#x %q", ack.ReasonCode, ack.Properties.ReasonString)
	}
}

// Passwords: right accepted, wrong and unknown refused (0x86, or 0x04 for
// 3.1.1) without saying which; the identity is the user name.
func TestPasswords(t *testing.T) {
	file := filepath.Join(t.TempDir(), "passwd")
	if err := passwd.Set(file, "nav", "correct horse", bcrypt.MinCost); err != nil {
		t.Fatal(err)
	}
	b := brokertest.Run(t, func(c *broker.Config) {
		c.Auth.PasswordFile = file
		c.Auth.AllowAnonymous = auth.ToggleFalse
		c.Auth.ACL = robotACL
	})
	login := func(version byte, user, pass string) packets.Packet {
		_, ack := connack(t, "tcp", b.Addr().String(), version, "nav-1", func(pk *packets.Packet) {
			pk.Connect.Username, pk.Connect.UsernameFlag = []byte(user), user != ""
			pk.Connect.Password, pk.Connect.PasswordFlag = []byte(pass), pass != ""
		})
		return ack
	}
	if ack := login(mqtttest.V5, "nav", "correct horse"); ack.ReasonCode != 0 {
		t.Fatalf("right password: %#x", ack.ReasonCode)
	}
	for _, tc := range []struct {
		version    byte
		user, pass string
		code       byte
	}{
		{mqtttest.V5, "nav", "wrong", packets.ErrBadUsernameOrPassword.Code},
		{mqtttest.V5, "ghost", "correct horse", packets.ErrBadUsernameOrPassword.Code},
		{mqtttest.V311, "nav", "wrong", 0x04},
		{mqtttest.V5, "", "", packets.ErrNotAuthorized.Code}, // anonymous is off
	} {
		if ack := login(tc.version, tc.user, tc.pass); ack.ReasonCode != tc.code {
			t.Errorf("%q/%q over v%d: %#x, want %#x", tc.user, tc.pass, tc.version, ack.ReasonCode, tc.code)
		}
	}
	c, _ := connack(t, "tcp", b.Addr().String(), mqtttest.V5, "nav-2", func(pk *packets.Packet) {
		pk.Connect.Username, pk.Connect.UsernameFlag = []byte("nav"), true
		pk.Connect.Password, pk.Connect.PasswordFlag = []byte("correct horse"), true
	})
	if got := c.Publish(envelope.HealthTopic("nav"), envHealth("nav"), 1, true); got.ReasonCode != 0 {
		t.Fatalf("nav's health: %#x %q", got.ReasonCode, got.Properties.ReasonString)
	}
}

// Anonymous clients only on local listeners: never on one bound beyond
// loopback, and, unless allow_anonymous says true, not at all once such a
// listener exists.
func TestAnonymousOnlyOnLoopback(t *testing.T) {
	networked := func(c *broker.Config) {
		c.Listeners.TCP.Address, c.Listeners.TCP.AllowRemote = "0.0.0.0:0", true
	}
	b := brokertest.Run(t, networked)
	port := b.Addr().(*net.TCPAddr).Port
	tcp := net.JoinHostPort("127.0.0.1", itoa(port))
	if _, ack := connack(t, "tcp", tcp, mqtttest.V5, "anon", nil); ack.ReasonCode != packets.ErrNotAuthorized.Code ||
		!strings.Contains(ack.Properties.ReasonString, "bound beyond loopback") {
		t.Fatalf("anonymous on 0.0.0.0: %#x %q", ack.ReasonCode, ack.Properties.ReasonString)
	}
	if _, ack := connack(t, "tcp", tcp, mqtttest.V311, "anon", nil); ack.ReasonCode != packets.Err3NotAuthorized.Code {
		t.Fatalf("anonymous 3.1.1 on 0.0.0.0: %#x", ack.ReasonCode)
	}
	if _, ack := connack(t, "unix", b.SocketPath(), mqtttest.V5, "anon", nil); ack.ReasonCode != packets.ErrNotAuthorized.Code ||
		!strings.Contains(ack.Properties.ReasonString, "auth.allow_anonymous") {
		t.Fatalf("anonymous on the socket while networked (auto): %#x %q", ack.ReasonCode, ack.Properties.ReasonString)
	}

	open := brokertest.Run(t, func(c *broker.Config) { networked(c); c.Auth.AllowAnonymous = auth.ToggleTrue })
	if _, ack := connack(t, "unix", open.SocketPath(), mqtttest.V5, "anon", nil); ack.ReasonCode != 0 {
		t.Fatalf("anonymous on the socket, allowed: %#x", ack.ReasonCode)
	}
	openTCP := net.JoinHostPort("127.0.0.1", itoa(open.Addr().(*net.TCPAddr).Port))
	if _, ack := connack(t, "tcp", openTCP, mqtttest.V5, "anon", nil); ack.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("anonymous on 0.0.0.0, allowed in config: %#x", ack.ReasonCode)
	}

	local := brokertest.Run(t, nil) // the embedded default: loopback only
	if _, ack := connack(t, "tcp", local.Addr().String(), mqtttest.V5, "anon", nil); ack.ReasonCode != 0 {
		t.Fatalf("anonymous on loopback by default: %#x", ack.ReasonCode)
	}
}

// An MQTT 3.1.1 publisher the ACL denies is acknowledged and its message
// dropped; a reload changes the ACL for clients already connected.
func TestACLDenialAndReload(t *testing.T) {
	cfg := brokertest.Config(t)
	cfg.Auth.ACL = acl.Config{Default: acl.Allow, Rules: []acl.Rule{{Who: acl.Everyone, DenyWrite: []string{"arm/#"}}}}
	b := brokertest.Start(t, cfg, brokertest.Logger())
	sub, _ := connack(t, "unix", b.SocketPath(), mqtttest.V5, "watch", nil)
	sub.Subscribe("#", 1)
	pub, _ := connack(t, "tcp", b.Addr().String(), mqtttest.V311, "nav", nil)
	if got := pub.Publish("arm/move", []byte(envFrom("nav", "go")), 1, false); got.ReasonCode != 0 {
		t.Fatalf("3.1.1 denial is acknowledged as usual: %#x", got.ReasonCode)
	}
	ok := []byte(envFrom("nav", "fine"))
	pub.Publish("nav/pose", ok, 1, false)
	if pk := sub.Expect(packets.Publish, 0); pk.TopicName != "nav/pose" {
		t.Fatalf("the denied message was delivered: %s", pk.TopicName)
	}

	cfg.Auth.ACL.Rules[0].DenyWrite = []string{"nav/#"}
	if err := b.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	pub.Publish("nav/pose", ok, 1, false)
	pub.Publish("arm/move", []byte(envFrom("nav", "now allowed")), 1, false)
	if pk := sub.Expect(packets.Publish, 0); pk.TopicName != "arm/move" {
		t.Fatalf("after reload got %s first", pk.TopicName)
	}
}

func envHealth(source string) []byte {
	e, _ := envelope.New(envelope.TypeHealth, source, envelope.Health{OK: true, Event: "ready"})
	b, _ := e.Marshal()
	return b
}

func itoa(n int) string { return strconv.Itoa(n) }

// userNameOf is this process's user name, which a group identity gives it.
func userNameOf(t *testing.T) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Skipf("no user name for uid %d: %v", os.Getuid(), err)
	}
	return u.Username
}

func notRetainedOn(t *testing.T, b *broker.Broker, topic string) {
	t.Helper()
	if m := b.Server().Topics.Messages(topic); len(m) != 0 {
		t.Fatalf("retained on %s: %q", topic, m[0].Payload)
	}
}
