package broker

import (
	"fmt"
	"strings"
)

// liveSections are the config sections Reload applies while clients stay
// connected.
var liveSections = []string{"contract"}

// Reload applies the parts of cfg that can change while clients stay
// connected: the contract (enforce, exempt topics, source binding, size,
// republishing and rules). Everything else in cfg is ignored until the
// next start; NeedsRestart names it. On error nothing changes.
func (b *Broker) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid broker config:\n%w", err)
	}
	if err := b.contract.Reload(cfg.Contract); err != nil {
		return fmt.Errorf("reload contract: %w", err)
	}
	return nil
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
