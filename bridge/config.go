package bridge

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/tarsmq/tarsmq/internal/bytesize"
	"github.com/tarsmq/tarsmq/internal/topic"
)

// Config is one entry of the bridges list.
type Config struct {
	// Name identifies the bridge in logs, metrics and its queue's keys.
	Name string `yaml:"name"`
	// URL of the upstream broker: tcp://, mqtt://, ssl://, tls://, mqtts://
	// host:port, or unix:///path.
	URL string `yaml:"url"`
	// ClientID upstream; "{device_id}" is replaced. Default
	// "tarsmq-{device_id}-<name>".
	ClientID string `yaml:"client_id,omitempty"`
	Username string `yaml:"username,omitempty"`
	// Password, or PasswordFile to read it from (kept out of the config).
	Password     string `yaml:"password,omitempty" secret:"true"`
	PasswordFile string `yaml:"password_file,omitempty"`
	// TLS for tls://, ssl:// and mqtts:// URLs.
	TLS TLSConfig `yaml:"tls,omitempty"`
	// Protocol is "5" (default) or "3.1.1".
	Protocol string `yaml:"protocol,omitempty"`
	// Keepalive of the upstream connection.
	Keepalive time.Duration `yaml:"keepalive,omitempty"`
	// SessionExpiry asks the upstream to keep the bridge's session (its
	// subscriptions, and the in messages sent meanwhile) this long while
	// the link is down (MQTT 5).
	SessionExpiry time.Duration `yaml:"session_expiry,omitempty"`
	// Reconnect backoff, with jitter; the first connect also waits a random
	// part of ReconnectMin... up to FirstConnectJitter, so that a fleet
	// coming back at once does not arrive at once.
	ReconnectMin       time.Duration `yaml:"reconnect_min,omitempty"`
	ReconnectMax       time.Duration `yaml:"reconnect_max,omitempty"`
	FirstConnectJitter time.Duration `yaml:"first_connect_jitter,omitempty"`
	// Inflight is how many QoS 1 messages may await the upstream's PUBACK.
	Inflight int `yaml:"inflight,omitempty"`
	// Queue bounds the store-and-forward queue of QoS 1 out messages.
	Queue QueueConfig `yaml:"queue,omitempty"`
	// Out rules forward local messages upstream, In rules upstream ones down.
	Out []Rule `yaml:"out,omitempty"`
	In  []Rule `yaml:"in,omitempty"`
}

// TLSConfig is the upstream connection's TLS.
type TLSConfig struct {
	CAFile     string `yaml:"ca_file,omitempty"`     // trust these (PEM) instead of the system's
	CertFile   string `yaml:"cert_file,omitempty"`   // client certificate (PEM), with KeyFile
	KeyFile    string `yaml:"key_file,omitempty"`    //
	ServerName string `yaml:"server_name,omitempty"` // default: the URL's host
}

// QueueConfig bounds a bridge's queue and says what happens beyond.
type QueueConfig struct {
	MaxMessages int           `yaml:"max_messages,omitempty"`
	MaxBytes    bytesize.Size `yaml:"max_bytes,omitempty"`
	// Overflow is DropOldest (default) or RefuseNew.
	Overflow string `yaml:"overflow,omitempty"`
}

// Queue overflow policies.
const (
	DropOldest = "drop_oldest" // the oldest queued message makes room, counted
	RefuseNew  = "refuse_new"  // the new message is not queued, counted
)

// Rule maps a topic filter between the two brokers: local topic
// LocalPrefix+T is remote topic RemotePrefix+T, for every T that Topic
// matches. "{device_id}" in the prefixes is replaced.
type Rule struct {
	Topic        string `yaml:"topic"`
	LocalPrefix  string `yaml:"local_prefix,omitempty"`
	RemotePrefix string `yaml:"remote_prefix,omitempty"`
	// QoS of the forwarded messages (0 or 1): out QoS 1 messages go
	// through the store-and-forward queue; QoS 0 ones are sent while the
	// link is up and dropped, counted, while it is down.
	QoS byte `yaml:"qos"`
}

// Defaults fills in what c leaves out.
func (c Config) Defaults(deviceID string) Config {
	if c.ClientID == "" {
		c.ClientID = "tarsmq-{device_id}-" + c.Name
	}
	c.ClientID = expand(c.ClientID, deviceID)
	if c.Protocol == "" {
		c.Protocol = "5"
	}
	if c.Keepalive == 0 {
		c.Keepalive = 30 * time.Second
	}
	if c.SessionExpiry == 0 {
		c.SessionExpiry = 24 * time.Hour
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = time.Second
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = time.Minute
	}
	if c.FirstConnectJitter == 0 {
		c.FirstConnectJitter = 5 * time.Second
	}
	if c.Inflight == 0 {
		c.Inflight = 100
	}
	if c.Queue.MaxMessages == 0 {
		c.Queue.MaxMessages = 100_000
	}
	if c.Queue.MaxBytes == 0 {
		c.Queue.MaxBytes = 64 << 20
	}
	if c.Queue.Overflow == "" {
		c.Queue.Overflow = DropOldest
	}
	for _, rules := range [][]Rule{c.Out, c.In} {
		for i := range rules {
			rules[i].LocalPrefix = expand(rules[i].LocalPrefix, deviceID)
			rules[i].RemotePrefix = expand(rules[i].RemotePrefix, deviceID)
		}
	}
	return c
}

func expand(s, deviceID string) string { return strings.ReplaceAll(s, "{device_id}", deviceID) }

// Validate names every problem of bridges[i] (at) and its fix.
func (c Config) Validate(at string) error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", at, key, fmt.Sprintf(format, args...)))
	}
	if c.Name == "" || strings.ContainsAny(c.Name, ":/+# ") {
		bad("name", "%q: give each bridge a short name without ':', '/', '+', '#' or spaces, e.g. fleet", c.Name)
	}
	if _, _, err := parseURL(c.URL); err != nil {
		bad("url", "%v", err)
	} else if u, _ := url.Parse(c.URL); u.User != nil {
		bad("url", "%s holds credentials: set username, and password or password_file, instead (they stay out of logs)", redact(c.URL))
	}
	if c.Protocol != "" && c.Protocol != "5" && c.Protocol != "3.1.1" {
		bad("protocol", "%q: use 5 or 3.1.1", c.Protocol)
	}
	if c.Password != "" && c.PasswordFile != "" {
		bad("password_file", "set password or password_file, not both")
	}
	if c.PasswordFile != "" {
		if _, err := os.ReadFile(c.PasswordFile); err != nil {
			bad("password_file", "%v", err)
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls.cert_file", "a client certificate needs both cert_file and key_file")
	}
	if c.Inflight < 0 || c.Inflight > 65535 {
		bad("inflight", "%d: use 1 to 65535", c.Inflight)
	}
	if c.ReconnectMax != 0 && c.ReconnectMax < c.ReconnectMin {
		bad("reconnect_max", "%v is below reconnect_min (%v)", c.ReconnectMax, c.ReconnectMin)
	}
	if o := c.Queue.Overflow; o != "" && o != DropOldest && o != RefuseNew {
		bad("queue.overflow", "%q: use %s or %s", o, DropOldest, RefuseNew)
	}
	if c.Queue.MaxMessages < 0 || c.Queue.MaxBytes < 0 {
		bad("queue", "bounds must be positive")
	}
	if len(c.Out) == 0 && len(c.In) == 0 {
		bad("out", "a bridge with no out and no in rules forwards nothing; add e.g. {topic: system/health/#, remote_prefix: fleet/{device_id}/, qos: 1}")
	}
	for dir, rules := range map[string][]Rule{"out": c.Out, "in": c.In} {
		for i, r := range rules {
			key := fmt.Sprintf("%s[%d]", dir, i)
			if !topic.ValidFilter(r.Topic) {
				bad(key+".topic", "%q is not a topic filter", r.Topic)
			}
			if r.QoS > 1 {
				bad(key+".qos", "%d: use 0 or 1", r.QoS)
			}
			for name, p := range map[string]string{"local_prefix": r.LocalPrefix, "remote_prefix": r.RemotePrefix} {
				if strings.ContainsAny(p, "+#") {
					bad(key+"."+name, "%q: a prefix is a topic start, without wildcards", p)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// parseURL returns the network and address to dial and whether to use TLS.
func parseURL(raw string) (network, address string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return "", "", fmt.Errorf("%q is not a URL; use e.g. mqtts://fleet.example.com:8883 or tcp://10.0.0.5:1883", raw)
	}
	switch u.Scheme {
	case "unix":
		if u.Path == "" {
			return "", "", fmt.Errorf("%q has no socket path", raw)
		}
		return "unix", u.Path, nil
	case "tcp", "mqtt":
		return "tcp", hostPort(u.Host, "1883"), nil
	case "tls", "ssl", "mqtts":
		return "tls", hostPort(u.Host, "8883"), nil
	}
	return "", "", fmt.Errorf("%q: scheme %q is not one of tcp, mqtt, tls, ssl, mqtts, unix; use e.g. mqtts://fleet.example.com:8883", raw, u.Scheme)
}

func hostPort(host, port string) string {
	if strings.Contains(host, ":") && !strings.HasSuffix(host, "]") {
		return host
	}
	return host + ":" + port
}

// remote maps a local topic to the remote one under r.
func (r Rule) remote(local string) (string, bool) {
	rest, ok := strings.CutPrefix(local, r.LocalPrefix)
	if !ok || !topic.Match(r.Topic, rest) {
		return "", false
	}
	return r.RemotePrefix + rest, true
}

// local maps a remote topic to the local one under r.
func (r Rule) local(remote string) (string, bool) {
	rest, ok := strings.CutPrefix(remote, r.RemotePrefix)
	if !ok || !topic.Match(r.Topic, rest) {
		return "", false
	}
	return r.LocalPrefix + rest, true
}

// localFilter and remoteFilter are what to subscribe to on each side.
func (r Rule) localFilter() string  { return r.LocalPrefix + r.Topic }
func (r Rule) remoteFilter() string { return r.RemotePrefix + r.Topic }
