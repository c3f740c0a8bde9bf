package auth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/tarsmq/tarsmq/internal/acl"
	"github.com/tarsmq/tarsmq/internal/passwd"
)

// How clients on the Unix socket are identified (auth.socket).
const (
	// SocketPeerCred: by the kernel. The connecting process's uid and
	// groups (SO_PEERCRED) are mapped to an identity by auth.identities;
	// whatever username the client claims is ignored, and a uid no entry
	// maps is refused.
	SocketPeerCred = "peercred"
	// SocketPassword: like network clients, by the password file, else
	// anonymous where that is allowed.
	SocketPassword = "password"
)

// Config is the auth section of the configuration.
type Config struct {
	// Socket is SocketPeerCred or SocketPassword.
	Socket string `yaml:"socket" env:"TARSMQ_AUTH_SOCKET" env-description:"how Unix socket clients are identified: peercred (by their uid, through auth.identities) or password"`
	// AllowAnonymous lets clients without a username connect, only ever on
	// the Unix socket (in password mode) and on listeners bound to a
	// loopback address. "auto": yes while no listener is bound beyond
	// loopback.
	AllowAnonymous Toggle `yaml:"allow_anonymous" env:"TARSMQ_AUTH_ALLOW_ANONYMOUS" env-description:"true, false or auto (allowed while every listener is local); never on a listener bound beyond loopback"`
	// PasswordFile holds user:bcrypt-hash lines (tarsmq passwd FILE USER).
	PasswordFile string `yaml:"password_file" env:"TARSMQ_AUTH_PASSWORD_FILE" env-description:"file of user:bcrypt-hash lines, written with 'tarsmq passwd'"`
	// Identities map Unix socket peers to identities (auth.socket: peercred).
	Identities []Identity `yaml:"identities"`
	// ACL says who may publish and read what.
	ACL acl.Config `yaml:"acl"`
}

// Identity maps the processes of a user, or the members of a group, that
// connect on the Unix socket to an identity.
type Identity struct {
	// User is a user name or numeric uid; Group a group name or numeric
	// gid, matching the process's primary or supplementary groups. One of
	// the two.
	User  string `yaml:"user,omitempty"`
	Group string `yaml:"group,omitempty"`
	// Name is the identity; default: the connecting user's name.
	Name string `yaml:"name,omitempty"`
	// ClientIDs are the client ids the identity may use, "*" matching any
	// run of characters; default: the name itself and "name:*". An MQTT 5
	// client with an empty client id is given "name:<random>".
	ClientIDs []string `yaml:"client_ids,omitempty"`
}

// DefaultConfig is the embedded development default: socket clients by
// password or anonymous, anonymous allowed while every listener is local,
// and every topic open to everyone.
func DefaultConfig() Config {
	return Config{Socket: SocketPassword, ACL: acl.Config{Default: acl.Allow}}
}

// Toggle is a setting that is true, false or auto ("").
type Toggle string

// Toggle values.
const (
	ToggleAuto  Toggle = "auto"
	ToggleTrue  Toggle = "true"
	ToggleFalse Toggle = "false"
)

// Resolve returns the toggle's value, auto meaning def.
func (t Toggle) Resolve(def bool) bool {
	switch t {
	case ToggleTrue:
		return true
	case ToggleFalse:
		return false
	}
	return def
}

func (t Toggle) valid() bool {
	return t == "" || t == ToggleAuto || t == ToggleTrue || t == ToggleFalse
}

// Validate checks the section, resolving users and groups and reading the
// password file; errors name the key and the fix.
func (c Config) Validate() error {
	_, err := c.compile()
	return err
}

// policy is the compiled Config: what a reload swaps.
type policy struct {
	cfg        Config
	identities []*identity
	passwords  *passwd.File // nil: no password file
	acl        *acl.ACL
}

func (c Config) compile() (*policy, error) {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("auth.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Socket != SocketPeerCred && c.Socket != SocketPassword {
		bad("socket", "%q is not a mode; use %q or %q", c.Socket, SocketPeerCred, SocketPassword)
	}
	if !c.AllowAnonymous.valid() {
		bad("allow_anonymous", "%q: use true, false or auto", c.AllowAnonymous)
	}
	p := &policy{cfg: c}
	for i, id := range c.Identities {
		ci, err := id.compile()
		if err != nil {
			bad(fmt.Sprintf("identities[%d]", i), "%v", err)
			continue
		}
		p.identities = append(p.identities, ci)
	}
	if c.Socket == SocketPeerCred && len(c.Identities) == 0 {
		bad("identities", "socket is peercred but no identity is mapped, so every socket client would be refused; add e.g. {group: tarsmq} (members connect as their user name)")
	}
	if c.PasswordFile != "" {
		f, err := passwd.Load(c.PasswordFile)
		if err != nil {
			bad("password_file", "%v", err)
		}
		p.passwords = f
	}
	a, err := acl.New(c.ACL)
	if err != nil {
		errs = append(errs, err)
	}
	p.acl = a
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// Unknown lists the users and groups of auth.identities this machine does
// not know yet: they match no client until they exist.
func (c Config) Unknown() []string {
	p, err := c.compile()
	if err != nil {
		return nil
	}
	var out []string
	for _, id := range p.identities {
		if u := id.unknown(); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// validName says what is wrong with an identity name, or "".
func validName(name string) string {
	switch {
	case name == "":
		return "is empty"
	case strings.ContainsAny(name, ":/+#*\x00") || strings.IndexFunc(name, func(r rune) bool { return r <= ' ' }) >= 0:
		return "may not contain ':', '/', '+', '#', '*', spaces or control characters"
	}
	return ""
}
