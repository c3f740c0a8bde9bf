package broker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tarsmq/tarsmq/bridge"
	"github.com/tarsmq/tarsmq/hooks/auth"
	"github.com/tarsmq/tarsmq/hooks/contract"
	"github.com/tarsmq/tarsmq/internal/bytesize"
	"github.com/tarsmq/tarsmq/store"
)

// Config is what the broker needs to run: where it listens and how it treats
// clients that read more slowly than others publish. Build it with
// DefaultConfig, change what you need, then let New validate it.
type Config struct {
	Listeners      ListenersConfig      `yaml:"listeners"`
	Limits         LimitsConfig         `yaml:"limits"`
	SlowSubscriber SlowSubscriberConfig `yaml:"slow_subscriber"`
	Auth           auth.Config          `yaml:"auth"`
	Contract       contract.Config      `yaml:"contract"`
	Store          store.Config         `yaml:"store"`
	Admin          AdminConfig          `yaml:"admin"`
	// DeviceID names this device to upstream brokers ({device_id} in
	// bridges); default: the host name.
	DeviceID string          `yaml:"device_id" env:"TARSMQ_DEVICE_ID" env-description:"this device's name upstream ({device_id} in bridges); default: the host name"`
	Bridges  []bridge.Config `yaml:"bridges"`
}

// AdminConfig is the admin HTTP listener (/v1/health): a host:port, loopback
// unless allow_remote, or the absolute path of a Unix socket; "" turns it off.
type AdminConfig struct {
	Address     string `yaml:"address" env:"TARSMQ_ADMIN_ADDRESS" env-description:"admin HTTP listener: host:port or a Unix socket path (empty: off)"`
	AllowRemote bool   `yaml:"allow_remote" env:"TARSMQ_ADMIN_ALLOW_REMOTE" env-description:"allow a non-loopback admin address"`
	// Pprof serves Go's profiles under /debug/pprof/, for diagnosing CPU
	// and memory use on a device.
	Pprof bool `yaml:"pprof" env:"TARSMQ_ADMIN_PPROF" env-description:"serve Go's profiler at /debug/pprof/ on the admin listener"`
}

// ListenersConfig holds the three listeners. An empty path or address turns a
// listener off; at least one must stay on.
type ListenersConfig struct {
	Unix      UnixConfig      `yaml:"unix"`
	TCP       TCPConfig       `yaml:"tcp"`
	WebSocket WebSocketConfig `yaml:"websocket"`
}

// UnixConfig is the Unix domain socket listener, the usual way on-device
// services reach the broker.
type UnixConfig struct {
	Path  string `yaml:"path" env:"TARSMQ_LISTENERS_UNIX_PATH" env-description:"Unix socket path (empty: off)"`
	Mode  string `yaml:"mode" env:"TARSMQ_LISTENERS_UNIX_MODE" env-description:"socket file mode, octal"`
	Group string `yaml:"group" env:"TARSMQ_LISTENERS_UNIX_GROUP" env-description:"group (name or gid) that owns the socket"`
	Owner string `yaml:"owner" env:"TARSMQ_LISTENERS_UNIX_OWNER" env-description:"user (name or uid) that owns the socket; another user than the broker's needs root"`
}

// TCPConfig is the MQTT over TCP listener.
type TCPConfig struct {
	Address     string `yaml:"address" env:"TARSMQ_LISTENERS_TCP_ADDRESS" env-description:"host:port (empty: off)"`
	AllowRemote bool   `yaml:"allow_remote" env:"TARSMQ_LISTENERS_TCP_ALLOW_REMOTE" env-description:"allow a non-loopback address"`
	// TLSCertFile and TLSKeyFile (PEM) turn on TLS; a reload (SIGHUP)
	// reads them again, for renewed certificates.
	TLSCertFile string `yaml:"tls_cert_file" env:"TARSMQ_LISTENERS_TCP_TLS_CERT_FILE" env-description:"PEM certificate (chain) file: serve MQTT over TLS"`
	TLSKeyFile  string `yaml:"tls_key_file" env:"TARSMQ_LISTENERS_TCP_TLS_KEY_FILE" env-description:"PEM private key file for tls_cert_file"`
}

// WebSocketConfig is the MQTT over WebSocket listener, off by default.
type WebSocketConfig struct {
	Address        string   `yaml:"address" env:"TARSMQ_LISTENERS_WEBSOCKET_ADDRESS" env-description:"host:port (empty: off)"`
	AllowRemote    bool     `yaml:"allow_remote" env:"TARSMQ_LISTENERS_WEBSOCKET_ALLOW_REMOTE" env-description:"allow a non-loopback address"`
	AllowedOrigins []string `yaml:"allowed_origins" env:"TARSMQ_LISTENERS_WEBSOCKET_ALLOWED_ORIGINS" env-description:"browser origins allowed besides the listener's own host (comma separated)"`
}

// LimitsConfig bounds what one client can make the broker hold in memory.
type LimitsConfig struct {
	MaxPacketSize      bytesize.Size `yaml:"max_packet_size" env:"TARSMQ_LIMITS_MAX_PACKET_SIZE" env-description:"largest MQTT packet accepted from a client"`
	MaxInflight        int           `yaml:"max_inflight" env:"TARSMQ_LIMITS_MAX_INFLIGHT" env-description:"unacknowledged QoS 1/2 messages sent to one client (a v5 client's Receive Maximum lowers it)"`
	MaxQueuedMessages  int           `yaml:"max_queued_messages" env:"TARSMQ_LIMITS_MAX_QUEUED_MESSAGES" env-description:"messages waiting to be written to one connected client"`
	MaxQueuedBytes     bytesize.Size `yaml:"max_queued_bytes" env:"TARSMQ_LIMITS_MAX_QUEUED_BYTES" env-description:"bytes waiting to be written to one connected client"`
	MaxQueuedTotal     bytesize.Size `yaml:"max_queued_bytes_total" env:"TARSMQ_LIMITS_MAX_QUEUED_BYTES_TOTAL" env-description:"bytes waiting to be written to all clients; beyond it the slow subscriber policy applies to every client with a backlog"`
	MaxSessionMessages int           `yaml:"max_session_messages" env:"TARSMQ_LIMITS_MAX_SESSION_MESSAGES" env-description:"QoS 1/2 messages kept per session, also while its client is offline"`
	MaxClients         int           `yaml:"max_clients" env:"TARSMQ_LIMITS_MAX_CLIENTS" env-description:"clients connected at once; more are refused (CONNACK 0x97)"`
	PublishRate        float64       `yaml:"publish_rate" env:"TARSMQ_LIMITS_PUBLISH_RATE" env-description:"publishes per second per client (0: no limit); MQTT 3.1.1 clients are slowed down, MQTT 5 ones disconnected (0x96)"`
	PublishBurst       int           `yaml:"publish_burst" env:"TARSMQ_LIMITS_PUBLISH_BURST" env-description:"publishes a client may send at once above publish_rate"`
	MaxTopicLength     int           `yaml:"max_topic_length" env:"TARSMQ_LIMITS_MAX_TOPIC_LENGTH" env-description:"longest topic or filter, in bytes"`
	MaxTopicLevels     int           `yaml:"max_topic_levels" env:"TARSMQ_LIMITS_MAX_TOPIC_LEVELS" env-description:"most levels in a topic or filter"`
	MaxRetained        int           `yaml:"max_retained_messages" env:"TARSMQ_LIMITS_MAX_RETAINED_MESSAGES" env-description:"retained messages held in all"`
	MaxRetainedBytes   bytesize.Size `yaml:"max_retained_bytes" env:"TARSMQ_LIMITS_MAX_RETAINED_BYTES" env-description:"payload bytes of all retained messages"`
	// MemoryLimit is the Go runtime's soft memory limit (tarsmq serve sets
	// it unless GOMEMLIMIT does): near it the broker collects garbage
	// harder. With it, garbage is collected less often far from it.
	MemoryLimit bytesize.Size `yaml:"memory_limit" env:"TARSMQ_LIMITS_MEMORY_LIMIT" env-description:"soft limit of the broker's Go heap (0: none); raise it for hundreds of busy clients"`
}

// SlowSubscriberConfig decides what happens when a subscriber's queue is full.
type SlowSubscriberConfig struct {
	Policy       string        `yaml:"policy" env:"TARSMQ_SLOW_SUBSCRIBER_POLICY" env-description:"qos (QoS 0 dropped, QoS 1/2 publishers wait), block (publishers wait) or drop (the subscriber loses its own messages, counted)"`
	BlockTimeout time.Duration `yaml:"block_timeout" env:"TARSMQ_SLOW_SUBSCRIBER_BLOCK_TIMEOUT" env-description:"longest a publisher waits for one stuck subscriber"`
	WriteTimeout time.Duration `yaml:"write_timeout" env:"TARSMQ_SLOW_SUBSCRIBER_WRITE_TIMEOUT" env-description:"a client that accepts no bytes for this long is disconnected"`
}

// Slow subscriber policies.
const (
	PolicyBlock = "block"
	PolicyDrop  = "drop"
	PolicyQoS   = "qos"
)

// DefaultConfig returns a configuration that runs as an unprivileged user with
// no file at all: a Unix socket under the runtime directory, TCP on
// 127.0.0.1:1883, no WebSocket.
func DefaultConfig() Config {
	return Config{
		Listeners: ListenersConfig{
			Unix: UnixConfig{Path: DefaultSocketPath(), Mode: "0660"},
			TCP:  TCPConfig{Address: "127.0.0.1:1883"},
		},
		Limits: LimitsConfig{
			MaxPacketSize:      4 << 20,
			MaxInflight:        1024,
			MaxQueuedMessages:  1000,
			MaxQueuedBytes:     8 << 20,
			MaxQueuedTotal:     16 << 20,
			MaxSessionMessages: 16384,
			MaxClients:         1000,
			PublishRate:        2000,
			PublishBurst:       4000,
			MaxTopicLength:     512,
			MaxTopicLevels:     32,
			MaxRetained:        10000,
			MaxRetainedBytes:   32 << 20,
			MemoryLimit:        48 << 20,
		},
		SlowSubscriber: SlowSubscriberConfig{
			Policy:       PolicyQoS,
			BlockTimeout: time.Second,
			WriteTimeout: 30 * time.Second,
		},
		Auth:     auth.DefaultConfig(),
		Contract: contract.DefaultConfig(),
		Store:    store.DefaultConfig(),
		Admin:    AdminConfig{Address: "127.0.0.1:9883"},
	}
}

// DefaultSocketPath is where the socket goes when the config does not say:
// $RUNTIME_DIRECTORY/tarsmq.sock under systemd, else
// $XDG_RUNTIME_DIR/tarsmq/tarsmq.sock, else /tmp/tarsmq-<uid>/tarsmq.sock.
func DefaultSocketPath() string {
	if dir := firstPath(os.Getenv("RUNTIME_DIRECTORY")); dir != "" {
		return filepath.Join(dir, "tarsmq.sock")
	}
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "tarsmq", "tarsmq.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("tarsmq-%d", os.Getuid()), "tarsmq.sock")
}

// firstPath returns the first of systemd's colon-separated directory list.
func firstPath(list string) string {
	first, _, _ := strings.Cut(list, ":")
	return first
}

// maxSocketPath is the longest path a Unix socket can bind on Linux
// (sizeof(sun_path) minus the terminating NUL).
const maxSocketPath = 107

// Validate checks the whole configuration and returns every problem, each
// naming its field and the fix.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}

	l := c.Listeners
	if l.Unix.Path == "" && l.TCP.Address == "" && l.WebSocket.Address == "" {
		bad("listeners", "every listener is off; set listeners.unix.path or listeners.tcp.address")
	}
	if p := l.Unix.Path; p != "" {
		if !filepath.IsAbs(p) {
			bad("listeners.unix.path", "%q is relative; use an absolute path such as /run/tarsmq/tarsmq.sock", p)
		}
		if len(p) > maxSocketPath {
			bad("listeners.unix.path", "%q is %d bytes; Linux allows %d for a socket path, choose a shorter one", p, len(p), maxSocketPath)
		}
		if _, err := ParseMode(l.Unix.Mode); err != nil {
			bad("listeners.unix.mode", "%v", err)
		}
		if g := l.Unix.Group; g != "" {
			if _, err := lookupGroup(g); err != nil {
				bad("listeners.unix.group", "%v; name an existing group or leave it empty", err)
			}
		}
	}
	checkAddr := func(field, addr string, allowRemote bool) {
		if addr == "" {
			return
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			bad(field, "%q is not host:port; use e.g. 127.0.0.1:1883", addr)
			return
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			bad(field, "port %q is not a number from 0 to 65535", port)
		}
		if !allowRemote && !isLoopbackHost(host) {
			bad(field, "%q is not a loopback address; use 127.0.0.1 or [::1], or set %s to true to listen beyond this device",
				addr, strings.TrimSuffix(field, "address")+"allow_remote")
		}
	}
	checkAddr("listeners.tcp.address", l.TCP.Address, l.TCP.AllowRemote)
	checkAddr("listeners.websocket.address", l.WebSocket.Address, l.WebSocket.AllowRemote)
	if a := c.Admin.Address; strings.HasPrefix(a, "/") {
		if len(a) > maxSocketPath {
			bad("admin.address", "%q is %d bytes; Linux allows %d for a socket path, choose a shorter one", a, len(a), maxSocketPath)
		}
	} else if a != "" && !strings.Contains(a, ":") {
		bad("admin.address", "%q is neither host:port nor an absolute socket path; use e.g. 127.0.0.1:9883 or /run/tarsmq/admin.sock", a)
	} else {
		checkAddr("admin.address", a, c.Admin.AllowRemote)
	}

	lim := c.Limits
	if lim.MaxPacketSize < 1<<10 || lim.MaxPacketSize > 256<<20 {
		bad("limits.max_packet_size", "%v is out of range; use 1KiB to 256MiB", lim.MaxPacketSize)
	}
	if lim.MaxInflight < 1 || lim.MaxInflight > 65535 {
		bad("limits.max_inflight", "%d is out of range; use 1 to 65535", lim.MaxInflight)
	}
	if lim.MaxQueuedMessages < 1 {
		bad("limits.max_queued_messages", "%d must be at least 1", lim.MaxQueuedMessages)
	}
	if lim.MaxQueuedBytes < 1<<10 {
		bad("limits.max_queued_bytes", "%v must be at least 1KiB", lim.MaxQueuedBytes)
	}
	if lim.MaxQueuedTotal != 0 && lim.MaxQueuedTotal < lim.MaxQueuedBytes {
		bad("limits.max_queued_bytes_total", "%v is less than max_queued_bytes (%v); raise it, or 0 for no total", lim.MaxQueuedTotal, lim.MaxQueuedBytes)
	}
	if need := lim.MaxInflight + 2*lim.MaxQueuedMessages; lim.MaxSessionMessages < need || lim.MaxSessionMessages > 65535 {
		bad("limits.max_session_messages", "%d must be at least max_inflight + 2 × max_queued_messages (%d) and at most 65535 (the MQTT packet id space); raise it or lower those",
			lim.MaxSessionMessages, need)
	}

	if lim.MemoryLimit != 0 && lim.MemoryLimit < 16<<20 {
		bad("limits.memory_limit", "%v is too small for the broker itself; use at least 16MiB, or 0 for none", lim.MemoryLimit)
	}
	if lim.MaxClients < 1 {
		bad("limits.max_clients", "%d must be at least 1", lim.MaxClients)
	}
	if lim.PublishRate < 0 {
		bad("limits.publish_rate", "%v must be 0 (no limit) or positive", lim.PublishRate)
	} else if lim.PublishRate > 0 && lim.PublishBurst < 1 {
		bad("limits.publish_burst", "%d must be at least 1 with a publish_rate; e.g. twice the rate", lim.PublishBurst)
	}
	for _, l := range []struct {
		key string
		n   int
	}{{"max_topic_length", lim.MaxTopicLength}, {"max_topic_levels", lim.MaxTopicLevels}, {"max_retained_messages", lim.MaxRetained}} {
		if l.n < 0 {
			bad("limits."+l.key, "%d must be 0 (no limit) or positive", l.n)
		}
	}
	if (c.Listeners.TCP.TLSCertFile == "") != (c.Listeners.TCP.TLSKeyFile == "") {
		bad("listeners.tcp.tls_cert_file", "TLS needs both tls_cert_file and tls_key_file")
	} else if c.Listeners.TCP.TLSCertFile != "" {
		if _, err := loadCertificate(c.Listeners.TCP.TLSCertFile, c.Listeners.TCP.TLSKeyFile); err != nil {
			bad("listeners.tcp.tls_cert_file", "%v", err)
		}
	}

	s := c.SlowSubscriber
	switch s.Policy {
	case PolicyBlock, PolicyQoS:
		if s.BlockTimeout <= 0 {
			bad("slow_subscriber.block_timeout", "%v must be positive, e.g. 1s", s.BlockTimeout)
		}
	case PolicyDrop:
	default:
		bad("slow_subscriber.policy", "%q is not a policy; use %q, %q or %q", s.Policy, PolicyQoS, PolicyBlock, PolicyDrop)
	}
	if s.WriteTimeout < time.Second {
		bad("slow_subscriber.write_timeout", "%v is too short; use at least 1s, e.g. 30s", s.WriteTimeout)
	}
	if err := c.Contract.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Auth.Validate(); err != nil {
		errs = append(errs, err)
	}
	names := map[string]bool{}
	for i, br := range c.Bridges {
		at := fmt.Sprintf("bridges[%d]", i)
		if err := br.Validate(at); err != nil {
			errs = append(errs, err)
		}
		if names[br.Name] {
			bad(at+".name", "%q is the name of an earlier bridge; names must differ (they key each queue)", br.Name)
		}
		names[br.Name] = true
	}
	if err := c.Store.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Device is DeviceID, or the host name.
func (c Config) Device() string {
	if c.DeviceID != "" {
		return c.DeviceID
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "device"
}

// networked reports whether a network listener is bound beyond loopback.
func (c Config) networked() bool {
	for _, a := range []string{c.Listeners.TCP.Address, c.Listeners.WebSocket.Address} {
		if a == "" {
			continue
		}
		if host, _, err := net.SplitHostPort(a); err != nil || !isLoopbackHost(host) {
			return true
		}
	}
	return false
}

// ParseMode reads an octal file mode such as "0660".
func ParseMode(s string) (os.FileMode, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("%q is not an octal file mode; use e.g. \"0660\"", s)
	}
	return os.FileMode(n), nil
}

// lookupUser resolves a user name or numeric uid.
func lookupUser(name string) (int, error) {
	if uid, err := strconv.Atoi(name); err == nil {
		return uid, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, fmt.Errorf("user %q: %w", name, err)
	}
	return strconv.Atoi(u.Uid)
}

// lookupGroup resolves a group name or numeric gid.
func lookupGroup(name string) (int, error) {
	if gid, err := strconv.Atoi(name); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", name, err)
	}
	return strconv.Atoi(g.Gid)
}

// isLoopbackHost reports whether a listen host stays on this device.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
