// Package contract is the broker hook that keeps the bus honest: every
// PUBLISH on a contract topic must carry a valid envelope (package
// envelope), of the type and data schema its topic's rule asks for, from
// the service it claims to come from.
//
// A rejected message never reaches a subscriber and is never retained. An
// MQTT 5 publisher at QoS 1 or 2 gets a PUBACK (or PUBREC) with reason code
// 0x99 "payload format invalid" (0x87 "not authorized" for a source that
// names another service) and a reason string naming the field. MQTT 3.1.1
// has no reason codes, so a 3.1.1 publisher, like an MQTT 5 one at QoS 0, is
// acknowledged as usual and its message is dropped: no redelivery loop, no
// hung client.
package contract

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/internal/lograte"
	"github.com/tarsmq/tarsmq/internal/reject"
	"github.com/tarsmq/tarsmq/internal/topic"
)

// Publisher publishes a message from the broker itself (mochi's
// Server.Publish with the inline client on).
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// RejectedTopicPrefix is where rejections are republished when configured:
// system/contract/rejected/{client}.
const RejectedTopicPrefix = "system/contract/rejected/"

// TypeRejected is the envelope type of a republished rejection.
const TypeRejected = "contract.rejected"

// Reason codes of the PUBACK/PUBREC sent to an MQTT 5 publisher.
var (
	CodeInvalid      = packets.ErrPayloadFormatInvalid.Code // 0x99
	CodeUnauthorized = packets.ErrNotAuthorized.Code        // 0x87
)

// Hook enforces the contract. Create it with New and add it to the broker
// with Server.AddHook(hook, Config{...}).
type Hook struct {
	mqtt.HookBase
	policy  atomic.Pointer[policy]
	pub     Publisher
	limiter *lograte.Limiter
	stats   stats

	notify chan Rejection // to the republisher, when Republish is on
	done   chan struct{}
	wg     sync.WaitGroup
}

// policy is what a reload can change: the configuration and its compiled
// rules, swapped as one.
type policy struct {
	cfg   Config
	rules []compiledRule
}

// New returns a Hook that logs to log and republishes rejections through
// pub (may be nil when Republish is off).
func New(log *slog.Logger, pub Publisher) *Hook {
	h := &Hook{pub: pub, limiter: lograte.New(10 * time.Second)}
	h.Log = log
	h.stats.byClient = make(map[string]map[envelope.Rule]uint64)
	return h
}

// ID names the hook.
func (h *Hook) ID() string { return "envelope-contract" }

// contractEvents are the events the hook handles.
var contractEvents = []byte{
	mqtt.OnConnect,
	mqtt.OnPublish,
}

// Provides says the hook handles OnPublish, and OnConnect for wills.
func (h *Hook) Provides(b byte) bool { return bytes.IndexByte(contractEvents, b) >= 0 }

// SetOpts keeps the hook's own logger rather than mochi's.
func (h *Hook) SetOpts(_ *slog.Logger, opts *mqtt.HookOptions) { h.Opts = opts }

// Init takes the hook's Config.
func (h *Hook) Init(config any) error {
	cfg, ok := config.(Config)
	if !ok {
		return fmt.Errorf("contract: %w: want contract.Config, got %T", mqtt.ErrInvalidConfigType, config)
	}
	if err := h.Reload(cfg); err != nil {
		return err
	}
	if h.pub != nil {
		h.notify = make(chan Rejection, 256)
		h.done = make(chan struct{})
		h.wg.Add(1)
		go h.republish()
	}
	return nil
}

// Reload swaps in a new configuration while clients stay connected: the
// next message is checked against it. On error the old one stays.
func (h *Hook) Reload(cfg Config) error {
	rules, err := cfg.compile()
	if err != nil {
		return err
	}
	if cfg.Republish && h.pub == nil {
		return errors.New("contract: republish is on but there is no publisher")
	}
	h.policy.Store(&policy{cfg: cfg, rules: rules})
	return nil
}

// Config returns the configuration in force.
func (h *Hook) Config() Config { return h.policy.Load().cfg }

// Stop ends the republisher.
func (h *Hook) Stop() error {
	if h.done != nil {
		close(h.done)
		h.wg.Wait()
		h.done = nil
	}
	return nil
}

// OnConnect checks the client's will, which mochi publishes at disconnect
// without OnPublish: a will that breaks the contract is removed, so it is
// never sent, and the rejection counted and logged.
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	p := h.policy.Load()
	if !pk.Connect.WillFlag || p.exempt(pk.Connect.WillTopic) {
		return nil
	}
	will := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: pk.Connect.WillQos, Retain: pk.Connect.WillRetain},
		TopicName:   pk.Connect.WillTopic,
		Payload:     pk.Connect.WillPayload,
	}
	if err := p.check(cl, will); err != nil {
		h.record(cl, will, err, "will", p.cfg)
		if p.cfg.Enforce {
			cl.Properties.Will = mqtt.Will{}
		}
	}
	return nil
}

// OnPublish checks a client's PUBLISH; the broker's own are trusted.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	p := h.policy.Load()
	if cl.Net.Inline || p.exempt(pk.TopicName) {
		return pk, nil
	}
	err := p.check(cl, pk)
	if err == nil {
		return pk, nil
	}
	h.record(cl, pk, err, "message", p.cfg)
	if !p.cfg.Enforce {
		return pk, nil
	}
	code := CodeInvalid
	if err.Rule == envelope.RuleIdentity {
		code = CodeUnauthorized
	}
	return pk, reject.Publish(cl, pk, code, err.Error())
}

func (p *policy) exempt(name string) bool {
	if strings.HasPrefix(name, "$") {
		return true
	}
	for _, f := range p.cfg.Exempt {
		if topic.Match(f, name) {
			return true
		}
	}
	return false
}

// check applies the contract to one message.
func (p *policy) check(cl *mqtt.Client, pk packets.Packet) *envelope.Error {
	if len(pk.Payload) == 0 && pk.FixedHeader.Retain {
		// An empty retained message clears the topic's retained one (and
		// is delivered empty, as MQTT says); a health topic only by its own
		// service.
		if name, ok := envelope.HealthService(pk.TopicName); ok && !isClient(cl, name) {
			return &envelope.Error{Field: "source", Rule: envelope.RuleIdentity,
				Detail: fmt.Sprintf("client %s may not clear the health of %q", identities(cl), name)}
		}
		return nil
	}
	f, err := envelope.Check(pk.Payload, int(p.cfg.MaxSize))
	if err != nil {
		var e *envelope.Error
		errors.As(err, &e)
		return e
	}
	if name, ok := envelope.HealthService(pk.TopicName); ok {
		if err := checkHealth(cl, &f, name); err != nil {
			return err
		}
	} else if p.cfg.BindSource && !sourceIsClient(cl, &f) {
		return &envelope.Error{Field: "source", Rule: envelope.RuleIdentity,
			Detail: fmt.Sprintf("%q is not this client (%s); a service publishes under its own name", f.SourceString(), identities(cl))}
	}
	return p.checkRules(pk.TopicName, &f)
}

// checkRules applies the topic rules to an envelope.
func (p *policy) checkRules(name string, f *envelope.Fields) *envelope.Error {
	for _, r := range p.rules {
		if !topic.Match(r.filter, name) {
			continue
		}
		if r.typ != "" && !f.TypeIs(r.typ) {
			return &envelope.Error{Field: "type", Rule: envelope.RuleTypeNotHere,
				Detail: fmt.Sprintf("%q is not allowed on %s, which takes %q", f.TypeString(), name, r.typ)}
		}
		if r.schema != nil {
			if err := validateSchema(r.schema, f.Data); err != nil {
				return err
			}
		}
	}
	return nil
}

// CheckMessage applies the contract to a message that comes from no local
// client (one a bridge brings down): the envelope and the topic rules, but
// no source binding, since its publisher is elsewhere. It returns nil when
// enforcement is off or the topic is exempt.
func (h *Hook) CheckMessage(name string, payload []byte) error {
	p := h.policy.Load()
	if !p.cfg.Enforce || p.exempt(name) || len(payload) == 0 {
		return nil
	}
	f, err := envelope.Check(payload, int(p.cfg.MaxSize))
	if err != nil {
		return err
	}
	if err := p.checkRules(name, &f); err != nil {
		return err
	}
	return nil
}

// checkHealth: on system/health/{name} the type is health.status, the data
// is health data, and topic, source and client all name the same service.
func checkHealth(cl *mqtt.Client, f *envelope.Fields, name string) *envelope.Error {
	if !f.TypeIs(envelope.TypeHealth) {
		return &envelope.Error{Field: "type", Rule: envelope.RuleTypeNotHere,
			Detail: fmt.Sprintf("%q is not allowed on health topics, which take %q", f.TypeString(), envelope.TypeHealth)}
	}
	if !f.SourceIs(name) {
		return &envelope.Error{Field: "source", Rule: envelope.RuleIdentity,
			Detail: fmt.Sprintf("%q does not match the topic's service %q", f.SourceString(), name)}
	}
	if !sourceIsClient(cl, f) {
		return &envelope.Error{Field: "source", Rule: envelope.RuleIdentity,
			Detail: fmt.Sprintf("client %s may not publish the health of %q", identities(cl), name)}
	}
	if _, err := envelope.ParseHealth(f.Data); err != nil {
		var e *envelope.Error
		errors.As(err, &e)
		return e
	}
	return nil
}

// sourceIsClient reports whether the envelope's source is the publisher's
// client id or username.
func sourceIsClient(cl *mqtt.Client, f *envelope.Fields) bool {
	return f.SourceIs(cl.ID) || (len(cl.Properties.Username) > 0 && f.SourceIs(string(cl.Properties.Username)))
}

// isClient reports whether name is the client's id or username.
func isClient(cl *mqtt.Client, name string) bool {
	return name == cl.ID || (len(cl.Properties.Username) > 0 && name == string(cl.Properties.Username))
}

func identities(cl *mqtt.Client) string {
	if len(cl.Properties.Username) > 0 && string(cl.Properties.Username) != cl.ID {
		return fmt.Sprintf("%q, user %q", cl.ID, cl.Properties.Username)
	}
	return fmt.Sprintf("%q", cl.ID)
}

// validateSchema checks data against a rule's schema.
func validateSchema(sch *jsonschema.Schema, data []byte) *envelope.Error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err == nil {
		err = sch.Validate(v)
	}
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if errors.As(err, &ve) {
		for len(ve.Causes) > 0 { // the first leaf says what is wrong, and where
			ve = ve.Causes[0]
		}
		return &envelope.Error{Field: "data", Rule: envelope.RuleSchema, Detail: "does not match the topic's schema: " + ve.Error()}
	}
	return &envelope.Error{Field: "data", Rule: envelope.RuleSchema, Detail: err.Error()}
}
