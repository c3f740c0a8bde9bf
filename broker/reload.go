package broker

import (
	"fmt"

	"github.com/tarsmq/tarsmq/hooks/auth"
	"strings"
)

// liveSections are the config sections Reload applies while clients stay
// connected.
var liveSections = []string{"contract", "auth"}

// Reload applies the parts of cfg that can change while clients stay
// connected: the contract (enforce, exempt topics, source binding, size,
// republishing and rules) and auth (identities, the password file, read
// again, and the ACL, which applies to clients already connected too). The
// TLS certificate and key are read again from their files, for renewed
// ones. Everything else in cfg is ignored until the next start;
// NeedsRestart names it. On error nothing changes.
func (b *Broker) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid broker config:\n%w", err)
	}
	if b.certs != nil {
		if err := b.certs.reload(); err != nil {
			return fmt.Errorf("reload TLS certificate: %w", err)
		}
	}
	if err := b.contract.Reload(cfg.Contract); err != nil {
		return fmt.Errorf("reload contract: %w", err)
	}
	if err := b.auth.Reload(cfg.Auth); err != nil {
		return fmt.Errorf("reload auth: %w", err)
	}
	b.warnUnknownIdentities(cfg.Auth)
	return nil
}

// warnUnknownIdentities names the users and groups of auth.identities
// this machine does not know: likely a typo, or a package not installed.
func (b *Broker) warnUnknownIdentities(cfg auth.Config) {
	if unknown := cfg.Unknown(); len(unknown) > 0 {
		b.log.Warn("auth.identities names users or groups this machine does not have; they match no client until they exist", "unknown", unknown)
	}
}

// NeedsRestart reports whether a changed config key (a YAML path such as
// "listeners.tcp.address") takes effect only when the broker starts again.
func NeedsRestart(key string) bool {
	for _, s := range liveSections {
		if key == s || strings.HasPrefix(key, s+".") {
			return false
		}
	}
	return true
}
