package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/tarsmq/tarsmq/envelope"
	"github.com/tarsmq/tarsmq/internal/bytesize"
	"github.com/tarsmq/tarsmq/internal/topic"
)

// Config is the contract section of the configuration.
type Config struct {
	// Enforce rejects invalid messages; false only counts and logs them.
	Enforce bool `yaml:"enforce" env:"TARSMQ_CONTRACT_ENFORCE" env-description:"reject messages that break the envelope contract (false: only count and log them)"`
	// Exempt lists topic filters whose messages are not envelopes. Topics
	// starting with "$" are always exempt.
	Exempt []string `yaml:"exempt" env:"TARSMQ_CONTRACT_EXEMPT" env-description:"topic filters exempt from the contract (comma separated)"`
	// BindSource requires the source of every envelope to be the
	// publisher's client id or username. On system/health/{name} the source
	// must always match both the client and the topic.
	BindSource bool `yaml:"bind_source" env:"TARSMQ_CONTRACT_BIND_SOURCE" env-description:"require source to be the publisher's client id or username"`
	// MaxSize is the largest envelope accepted.
	MaxSize bytesize.Size `yaml:"max_size" env:"TARSMQ_CONTRACT_MAX_SIZE" env-description:"largest envelope accepted"`
	// Republish sends every rejection, as an envelope of type
	// contract.rejected, to system/contract/rejected/{client}.
	Republish bool `yaml:"republish" env:"TARSMQ_CONTRACT_REPUBLISH" env-description:"publish each rejection to system/contract/rejected/{client}"`
	// Rules add checks for the topics they match.
	Rules []Rule `yaml:"rules"`
}

// Rule adds checks for messages on the topics its filter matches: the
// envelope type they must carry and a JSON Schema their data must satisfy.
type Rule struct {
	Topic      string         `yaml:"topic"`                 // topic filter
	Type       string         `yaml:"type,omitempty"`        // required type; "" any
	Schema     map[string]any `yaml:"schema,omitempty"`      // JSON Schema for data, inline
	SchemaFile string         `yaml:"schema_file,omitempty"` // or in a file
}

// DefaultExempt is the default list of exempt filters: heartbeats are not
// envelopes.
var DefaultExempt = []string{envelope.KeepaliveTopicPrefix + "#"}

// DefaultConfig enforces the contract everywhere but on heartbeats and $
// topics, with sources bound to their publishers.
func DefaultConfig() Config {
	return Config{
		Enforce:    true,
		Exempt:     append([]string(nil), DefaultExempt...),
		BindSource: true,
		MaxSize:    envelope.MaxSize,
	}
}

// Validate checks the configuration, compiling every schema; errors name
// the key ("contract.rules[2].schema") and the fix.
func (c Config) Validate() error {
	_, err := c.compile()
	return err
}

// compiledRule is a Rule ready to apply.
type compiledRule struct {
	filter string
	typ    string
	schema *jsonschema.Schema
}

func (c Config) compile() ([]compiledRule, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("contract.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	for i, f := range c.Exempt {
		if !topic.ValidFilter(f) {
			bad(fmt.Sprintf("exempt[%d]", i), "%q is not a topic filter; write e.g. sensors/raw/#", f)
		}
	}
	if c.MaxSize < 64 || c.MaxSize > 256<<20 {
		bad("max_size", "%v is out of range; use 64 bytes to 256MiB, e.g. 1MiB", c.MaxSize)
	}
	rules := make([]compiledRule, 0, len(c.Rules))
	for i, r := range c.Rules {
		at := fmt.Sprintf("rules[%d]", i)
		if !topic.ValidFilter(r.Topic) {
			bad(at+".topic", "%q is not a topic filter; write e.g. stt/final or robot/+/status", r.Topic)
		}
		if r.Type != "" {
			probe := envelope.Envelope{ID: "x", Type: r.Type, TS: 1, Source: "x"}
			if err := probe.Validate(); err != nil {
				bad(at+".type", "%q is not a valid envelope type: lower-case dotted, like stt.final", r.Type)
			}
		}
		cr := compiledRule{filter: r.Topic, typ: r.Type}
		doc, err := r.schemaJSON()
		if err != nil {
			bad(at+".schema_file", "%v", err)
		}
		if doc != nil {
			if cr.schema, err = compileSchema(fmt.Sprintf("contract-rule-%d.json", i), doc); err != nil {
				bad(at+".schema", "not a valid JSON Schema: %v", err)
			}
		}
		rules = append(rules, cr)
	}
	return rules, errors.Join(errs...)
}

// schemaJSON returns the rule's schema as JSON, or nil if it has none.
func (r Rule) schemaJSON() ([]byte, error) {
	switch {
	case r.Schema != nil && r.SchemaFile != "":
		return nil, fmt.Errorf("set schema or schema_file, not both")
	case r.SchemaFile != "":
		b, err := os.ReadFile(r.SchemaFile)
		if err != nil {
			return nil, fmt.Errorf("read schema: %w", err)
		}
		return b, nil
	case r.Schema != nil:
		return json.Marshal(r.Schema)
	}
	return nil, nil
}

func compileSchema(name string, doc []byte) (*jsonschema.Schema, error) {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(name, v); err != nil {
		return nil, err
	}
	return c.Compile(name)
}
