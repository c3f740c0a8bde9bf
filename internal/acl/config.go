package acl

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Config is the auth.acl section.
type Config struct {
	// Default is what applies when no rule matches: "allow" or "deny".
	Default string `yaml:"default"`
	// Rules grant and take away access; see Rule.
	Rules []Rule `yaml:"rules"`
}

// Rule lists what the clients it names may and may not do. Filters may use
// %u for the client's identity and %c for its client id, as whole levels
// or inside them (system/health/%u, jobs/%c/#, svc-%u/#); a filter whose
// value is missing or unsafe for a client never matches for it. Any other
// "%" in a filter is an error.
type Rule struct {
	// Who is an identity name, "*" (every client, anonymous included) or
	// "anonymous" (clients without an identity).
	Who string `yaml:"who"`
	// Read lists the topic filters it may subscribe to and receive.
	Read []string `yaml:"read,omitempty"`
	// Write lists the topic filters it may publish to.
	Write []string `yaml:"write,omitempty"`
	// DenyRead lists the filters it may not read, whatever else says.
	DenyRead []string `yaml:"deny_read,omitempty"`
	// DenyWrite lists the filters it may not publish to, whatever else says.
	DenyWrite []string `yaml:"deny_write,omitempty"`
}

// Who values with a special meaning.
const (
	Everyone  = "*"         // every client, anonymous included
	Anonymous = "anonymous" // clients without an identity
)

// Default values.
const (
	Allow = "allow"
	Deny  = "deny"
)

// maxFilter is the longest topic filter MQTT can carry.
const maxFilter = 65535

// Validate checks the configuration; errors name the key
// ("auth.acl.rules[1].write[0]") and the fix.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("auth.acl.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Default != Allow && c.Default != Deny {
		bad("default", "%q must be allow or deny (deny is safer: then rules list all that clients may do)", c.Default)
	}
	for i, r := range c.Rules {
		at := fmt.Sprintf("rules[%d]", i)
		if r.Who == "" {
			bad(at+".who", `empty; name an identity, "*" for every client or "anonymous" for clients without one`)
		}
		if len(r.Read)+len(r.Write)+len(r.DenyRead)+len(r.DenyWrite) == 0 {
			bad(at, "rule for %q has no read, write, deny_read or deny_write filters; add one or remove the rule", r.Who)
		}
		for _, l := range r.lists() {
			for j, f := range l.filters {
				key := fmt.Sprintf("%s.%s[%d]", at, l.key, j)
				if problem := checkFilter(f); problem != "" {
					bad(key, "%q %s", f, problem)
				} else if r.Who == Anonymous && strings.Contains(f, "%u") {
					bad(key, "%q uses %%u but anonymous clients have no identity, so it never matches; use %%c or a rule for \"*\"", f)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// list is one of a rule's filter lists with its YAML key.
type list struct {
	key     string
	filters []string
}

func (r Rule) lists() [4]list {
	return [4]list{
		{"read", r.Read}, {"write", r.Write},
		{"deny_read", r.DenyRead}, {"deny_write", r.DenyWrite},
	}
}

// checkFilter describes what is wrong with the rule filter f, "" if
// nothing: f must be a valid MQTT topic filter once a value is put in for
// each placeholder.
func checkFilter(f string) string {
	const hint = "; write e.g. robot/+/status, jobs/%c/# or system/health/%u"
	switch {
	case f == "":
		return "is empty" + hint
	case len(f) > maxFilter:
		return fmt.Sprintf("is longer than %d bytes", maxFilter)
	case !utf8.ValidString(f):
		return "is not valid UTF-8"
	case strings.IndexByte(f, 0) >= 0:
		return "contains a NUL character"
	}
	for rest := f; ; {
		i := strings.IndexByte(rest, '%')
		if i < 0 {
			break
		}
		if i+1 == len(rest) || (rest[i+1] != 'u' && rest[i+1] != 'c') {
			return fmt.Sprintf("has %q, which is no placeholder: use %%u for the identity or %%c for the client id", rest[i:min(i+2, len(rest))])
		}
		rest = rest[i+2:]
	}
	g := strings.NewReplacer("%u", "x", "%c", "x").Replace(f)
	levels := strings.Split(g, "/")
	if len(levels) > 1 && strings.EqualFold(levels[0], "$share") {
		return "is a shared subscription; write the topic filter without $share/{group}/"
	}
	for i, l := range levels {
		switch {
		case strings.Contains(l, "#") && (l != "#" || i != len(levels)-1):
			return `is not a topic filter: "#" must be the whole last level, as in robot/#` + hint
		case strings.Contains(l, "+") && l != "+":
			return `is not a topic filter: "+" must be a whole level, as in robot/+/status` + hint
		}
	}
	return ""
}
