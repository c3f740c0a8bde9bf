package client

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ilyakaznacheev/cleanenv"
)

// Config is how a client connects and behaves. FromEnv fills it from the
// environment variables the Python client reads; New takes it directly.
type Config struct {
	// URL of the broker: unix:///run/tarsmq/tarsmq.sock, tcp://host:port,
	// mqtt://[user:pass@]host[:port] (1883), mqtts:// or tls:// (8883).
	URL string `env:"MQTT_URL"`
	// ClientID is the MQTT client id, also the service's identity.
	ClientID string `env:"MQTT_CLIENT_ID"`
	// SourceName goes into every envelope's source (default: ClientID).
	SourceName string `env:"MQTT_SOURCE_NAME"`
	// Keepalive is the MQTT keepalive, in whole seconds (default 60).
	Keepalive Seconds `env:"MQTT_KEEPALIVE" env-default:"60"`
	// EnableHealth publishes ready, reconnected and shutdown health, and sets
	// a will so a crash shows.
	EnableHealth bool `env:"MQTT_ENABLE_HEALTH"`
	// EnableHeartbeat publishes a heartbeat every HeartbeatInterval.
	EnableHeartbeat   bool    `env:"MQTT_ENABLE_HEARTBEAT"`
	HeartbeatInterval Seconds `env:"MQTT_HEARTBEAT_INTERVAL" env-default:"5"`
	// DedupeTTL drops a message whose envelope (id, type) was seen within
	// it; 0 turns deduplication off. DedupeMaxEntries bounds the memory.
	DedupeTTL        Seconds `env:"MQTT_DEDUPE_TTL" env-default:"0"`
	DedupeMaxEntries int     `env:"MQTT_DEDUPE_MAX_ENTRIES" env-default:"0"`
	// Reconnect delays grow exponentially, with jitter, from min to max.
	ReconnectMinDelay Seconds `env:"MQTT_RECONNECT_MIN_DELAY" env-default:"0.5"`
	ReconnectMaxDelay Seconds `env:"MQTT_RECONNECT_MAX_DELAY" env-default:"5"`

	// Go only.

	// SessionExpiry keeps the session (subscriptions, QoS 1 messages) at the
	// broker while the client is away (default 1h).
	SessionExpiry time.Duration `env:"MQTT_SESSION_EXPIRY" env-default:"1h"`
	// PublishQueue bounds the publishes waiting while disconnected (default
	// 1000); when full, Publish returns ErrQueueFull.
	PublishQueue int `env:"MQTT_PUBLISH_QUEUE" env-default:"1000"`
	// HandlerQueue bounds the messages waiting for one subscription's
	// handler (default 256); beyond it messages are dropped and counted.
	HandlerQueue int `env:"MQTT_HANDLER_QUEUE" env-default:"256"`
	// TLS for mqtts:// (default: system roots).
	TLS *tls.Config `env:"-"`
	// Logger (default: discard).
	Logger *slog.Logger `env:"-"`
}

// DefaultConfig is the configuration FromEnv gives when only MQTT_URL and
// MQTT_CLIENT_ID are set.
func DefaultConfig(url, clientID string) Config {
	return Config{
		URL: url, ClientID: clientID,
		Keepalive:         Seconds(60 * time.Second),
		HeartbeatInterval: Seconds(5 * time.Second),
		ReconnectMinDelay: Seconds(500 * time.Millisecond),
		ReconnectMaxDelay: Seconds(5 * time.Second),
		SessionExpiry:     time.Hour,
		PublishQueue:      1000,
		HandlerQueue:      256,
	}
}

// Seconds is a duration written, as the Python client takes it, as a number
// of seconds ("5", "0.5"), or as a Go duration ("500ms").
type Seconds time.Duration

// SetValue implements cleanenv's Setter.
func (s *Seconds) SetValue(v string) error {
	if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
		*s = Seconds(time.Duration(f * float64(time.Second)))
		return nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return fmt.Errorf("%q is not a number of seconds (e.g. 0.5) or a duration (e.g. 500ms)", v)
	}
	*s = Seconds(d)
	return nil
}

// D is the duration.
func (s Seconds) D() time.Duration { return time.Duration(s) }

// ConfigFromEnv builds a Config from the environment (MQTT_URL,
// MQTT_CLIENT_ID and the rest), validated. Errors name the variable; no
// password appears in them.
func ConfigFromEnv() (Config, error) {
	var cfg Config
	if err := cleanenv.ReadEnv(&cfg); err != nil {
		return cfg, fmt.Errorf("client config: %s", redactError(err.Error()))
	}
	return cfg, cfg.Validate()
}

// Validate checks the configuration, naming the environment variable of
// each bad field.
func (c *Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("MQTT_URL is required, e.g. unix:///run/tarsmq/tarsmq.sock or mqtt://127.0.0.1:1883"))
	} else if _, err := parseURL(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("MQTT_URL: %w", err))
	}
	if c.ClientID == "" {
		errs = append(errs, errors.New("MQTT_CLIENT_ID is required: the service's name, e.g. stt-worker"))
	}
	if k := c.Keepalive.D(); k < time.Second || k > 65535*time.Second {
		errs = append(errs, fmt.Errorf("MQTT_KEEPALIVE: %v is out of range; use 1 to 65535 seconds", k))
	}
	if c.EnableHeartbeat && c.HeartbeatInterval.D() < time.Second {
		errs = append(errs, fmt.Errorf("MQTT_HEARTBEAT_INTERVAL: %v is too short; use at least 1 second", c.HeartbeatInterval.D()))
	}
	if c.DedupeTTL < 0 || c.DedupeMaxEntries < 0 {
		errs = append(errs, errors.New("MQTT_DEDUPE_TTL and MQTT_DEDUPE_MAX_ENTRIES must not be negative"))
	} else if c.DedupeTTL > 0 && c.DedupeMaxEntries == 0 {
		errs = append(errs, errors.New("MQTT_DEDUPE_MAX_ENTRIES must be above 0 when MQTT_DEDUPE_TTL is set, e.g. 2048"))
	}
	if c.ReconnectMinDelay.D() < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("MQTT_RECONNECT_MIN_DELAY: %v is too short; use at least 0.1 seconds", c.ReconnectMinDelay.D()))
	}
	if c.ReconnectMaxDelay < c.ReconnectMinDelay {
		errs = append(errs, fmt.Errorf("MQTT_RECONNECT_MAX_DELAY: %v is below MQTT_RECONNECT_MIN_DELAY (%v)", c.ReconnectMaxDelay.D(), c.ReconnectMinDelay.D()))
	}
	if c.SessionExpiry < 0 || c.PublishQueue < 1 || c.HandlerQueue < 1 {
		errs = append(errs, errors.New("MQTT_SESSION_EXPIRY must not be negative, MQTT_PUBLISH_QUEUE and MQTT_HANDLER_QUEUE must be at least 1"))
	}
	return errors.Join(errs...)
}

// source is the envelope source.
func (c *Config) source() string {
	if c.SourceName != "" {
		return c.SourceName
	}
	return c.ClientID
}

// endpoint is a parsed MQTT_URL.
type endpoint struct {
	url      *url.URL // for autopaho: tcp or tls, host:port
	network  string   // "unix" or "tcp"
	address  string   // socket path or host:port
	tls      bool
	username string
	password []byte
}

// parseURL reads MQTT_URL. Its errors never include the password.
func parseURL(raw string) (endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, fmt.Errorf("%q is not a URL", redactURL(raw))
	}
	ep := endpoint{url: u}
	if u.User != nil {
		ep.username = u.User.Username()
		if p, ok := u.User.Password(); ok {
			ep.password = []byte(p)
		}
	}
	switch strings.ToLower(u.Scheme) {
	case "unix":
		ep.network, ep.address = "unix", u.Path
		if u.Path == "" {
			return endpoint{}, fmt.Errorf("%q has no socket path; write unix:///run/tarsmq/tarsmq.sock (three slashes)", u.Redacted())
		}
	case "tcp", "mqtt":
		ep.network, ep.address = "tcp", hostPort(u, "1883")
	case "mqtts", "tls", "ssl":
		ep.network, ep.address, ep.tls = "tcp", hostPort(u, "8883"), true
	default:
		return endpoint{}, fmt.Errorf("scheme %q of %q is not supported; use unix://, tcp://, mqtt://, mqtts:// or tls://", u.Scheme, u.Redacted())
	}
	if ep.network == "tcp" && u.Hostname() == "" {
		return endpoint{}, fmt.Errorf("%q has no host", u.Redacted())
	}
	// autopaho dials this URL for tcp and tls; unix is dialled by us.
	scheme := "mqtt"
	if ep.tls {
		scheme = "tls"
	}
	ep.url = &url.URL{Scheme: scheme, Host: ep.address}
	if ep.network == "unix" {
		ep.url = &url.URL{Scheme: "unix", Path: ep.address}
	}
	return ep, nil
}

func hostPort(u *url.URL, port string) string {
	if u.Port() != "" {
		return u.Host
	}
	h := u.Hostname()
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	return h + ":" + port
}

// redactURL hides a password in something that looks like a URL.
func redactURL(s string) string {
	at := strings.LastIndex(s, "@")
	scheme := strings.Index(s, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return s
	}
	user := s[scheme+3 : at]
	if name, _, ok := strings.Cut(user, ":"); ok {
		return s[:scheme+3] + name + ":xxxxx" + s[at:]
	}
	return s
}

// redactError hides URL passwords in an error message.
func redactError(msg string) string {
	fields := strings.Fields(msg)
	for i, f := range fields {
		if strings.Contains(f, "://") {
			fields[i] = redactURL(strings.Trim(f, `"'`))
		}
	}
	return strings.Join(fields, " ")
}
